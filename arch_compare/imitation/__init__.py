"""The imitation protocol: targets to imitate, collecting their answers, and the study runner."""
