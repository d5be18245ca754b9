"""The job model, the job stores, the executor, the runner and the `connector` command."""
