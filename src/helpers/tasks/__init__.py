"""The models' own tasks, end to end, on one side: inputs (fixtures or AUDIO_DIR), the task
pipelines of each recipe family (gpa, covo), what a task wrote (results) and the task metrics
(metrics: WER / CER). Every task decodes through helpers.generate and is timed by
helpers.bench's clock. The stage that runs them on the target and the reference and compares
the two is helpers.stages.tasks."""
