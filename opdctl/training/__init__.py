"""The training loop: a run started or resumed, each step's rollouts generated and scored, judged, learnt
from and traced, and a stop on a signal.
"""
