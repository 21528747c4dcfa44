"""Running a task on a Ray cluster: model replicas on the workers, records streamed back to one driver."""
