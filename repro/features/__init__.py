"""Layer features: batched extraction into a resumable, memory-mappable store."""
