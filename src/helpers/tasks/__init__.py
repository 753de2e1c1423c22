"""The models' own tasks, end to end, on one side: inputs (fixtures or AUDIO_DIR), one decoding
loop (decode), the task pipelines of each recipe family (gpa, covo), what a task wrote
(results) and the task metrics (metrics: WER / CER). The stage that runs them on the target and
the reference and compares the two is helpers.stages.tasks."""
