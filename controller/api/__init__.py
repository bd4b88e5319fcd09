"""The TrainingJob API as the controller sees it: constants, and typed views of raw API bodies."""
