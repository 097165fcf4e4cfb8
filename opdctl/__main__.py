from opdctl.cli import main

if __name__ == "__main__":  # grading workers are spawned processes: they import this module without running it
    main()
