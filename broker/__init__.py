"""Layer 2, the Redis/RQ contract the receiver and the workers share: queue names, keys, the job serializer and
the atomic enqueue script."""
