from opdctl.cli import main

main()
