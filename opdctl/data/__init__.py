"""What models are asked and how answers are judged: training prompts, the word problems and the demo task,
benchmarks, answer extraction and grading.
"""
