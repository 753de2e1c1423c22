"""The runner: runs the stage notebooks (pipeline), keeps run folders (rundir), and publishes
the merged HTML and PDF (publish). It never imports a stage: stages talk to it through files."""
