"""The event dispatcher as a deployable: Kafka topics → HTTP CloudEvents → functions.

On the local full stack `flts up` runs it for you. On OpenFaaS CE (which has no Kafka
connector) run this next to the gateway as the Kafka trigger, pointing every deployment
at its gateway route, e.g.:

    KAFKA_BOOTSTRAP_SERVERS=kafka:9092 \
    DISPATCH_TARGETS=preprocess=http://gateway:8080/function/preprocess,eval=http://gateway:8080/function/eval,... \
    DISPATCH_INGRESS_HOST=0.0.0.0 DISPATCH_INGRESS_PORT=8080 \
    python main.py

and give the functions K_SINK=http://<this service>:8080/ so their output events reach Kafka.
OpenFaaS's of-watchdog answers 429 when max_inflight is reached: the dispatcher retries it
with backoff, honouring Retry-After. Every setting is documented in flts/dispatcher/__init__.py
and docs/local-stack.md.
"""
import sys

from flts.dispatcher import main

if __name__ == "__main__":
    sys.exit(main())
