"""Kafka: one KRaft JVM that is broker and controller, from the jars infra/install.sh fetched."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from flts.dev import processes
from flts.dev.infra import service
from flts.dev.infra.config import InfraConfig, InfraError, kafka_bootstrap, say

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = warn
"""


def _properties(cfg: InfraConfig, data_dir: Path) -> str:
    h, p, c = cfg.host, cfg.kafka_port, cfg.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{h}:{c}",
        "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
        "advertised.listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "2",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _java_cmd(cfg: InfraConfig, main: str, *args: str) -> list[str]:
    libs = cfg.cache_dir / "kafka" / "libs"
    if not libs.exists():
        raise InfraError(f"Kafka jars not found at {libs}: run `bash infra/install.sh` first")
    java = shutil.which("java")
    if not java:
        raise InfraError("java not found: Kafka 4.x needs Java 17+ (apt-get install -y openjdk-17-jre-headless)")
    kdir = cfg.service_dir("kafka")
    return [
        java,
        f"-Xmx{cfg.kafka_heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dlog4j2.shutdownHookEnabled=false",  # else the shutdown log is cut short
        f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={cfg.state_dir / 'logs'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def probe(cfg: InfraConfig, timeout_ms: int = 3000) -> bool:
    """The broker answers a describe_cluster with itself in it."""
    if not processes.port_open(cfg.host, cfg.kafka_port):
        return False
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap(cfg),
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        client_id="flts-infra-probe",
    )
    try:
        info = admin.describe_cluster()
        return bool(info.get("brokers"))
    finally:
        admin.close()


def _format_storage(cfg: InfraConfig, kdir: Path, props: Path) -> None:
    """First start only: KRaft needs its log dir formatted with a cluster id (kept in kdir/cluster.id)."""
    cid_file = kdir / "cluster.id"
    if not cid_file.exists():
        out = subprocess.run(
            _java_cmd(cfg, "kafka.tools.StorageTool", "random-uuid"),
            capture_output=True, text=True, cwd=kdir,
        )
        if out.returncode != 0:
            raise InfraError(f"kafka: StorageTool random-uuid failed:\n{out.stderr[-2000:]}")
        cid_file.write_text(out.stdout.strip().splitlines()[-1] + "\n")
    cid = cid_file.read_text().strip()
    say(f"kafka: formatting storage (cluster id {cid})")
    out = subprocess.run(
        _java_cmd(cfg, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(props), "--ignore-formatted"),
        capture_output=True, text=True, cwd=kdir,
    )
    with open(cfg.log_file("kafka"), "a") as fh:
        fh.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise InfraError(f"kafka: storage format failed:\n{processes.log_tail(cfg.log_file('kafka'))}")


@service.locked("kafka")
def start_kafka(cfg: InfraConfig) -> int:
    """Start the single-node KRaft broker+controller; return its pid."""
    ports = [(cfg.kafka_port, "FLTS_KAFKA_PORT"), (cfg.kafka_controller_port, "FLTS_KAFKA_CONTROLLER_PORT")]
    return service.ensure_started(cfg, "kafka", kafka_bootstrap(cfg), lambda: probe(cfg), ports,
                                  lambda: _launch(cfg))


def _launch(cfg: InfraConfig) -> int:
    name, url = "kafka", kafka_bootstrap(cfg)
    kdir = cfg.service_dir(name)
    data = kdir / "data"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "log4j2.properties").write_text(_LOG4J2)
    props = kdir / "server.properties"
    props.write_text(_properties(cfg, data))
    processes.log_mark(cfg.log_file(name), name)
    if not (data / "meta.properties").exists():
        _format_storage(cfg, kdir, props)
    return service.launch(cfg, name, _java_cmd(cfg, "kafka.Kafka", str(props)), lambda: probe(cfg),
                          f"{url} (controller {cfg.host}:{cfg.kafka_controller_port})")


def create_topics(cfg: InfraConfig, names: list[str] | None = None, partitions: int = 1) -> list[str]:
    """Create the missing topics with `partitions` partitions, and grow existing ones that have fewer
    (idempotent; Kafka never shrinks a topic); return the names that were created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = list(dict.fromkeys(cfg.topics if names is None else names))
    with _admin(cfg) as admin:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing],
                    timeout_ms=15000,
                    raise_errors=False,
                    wait_for_metadata=True,
                )
            except TopicAlreadyExistsError:
                pass
            existing = set(admin.list_topics())
            still = [n for n in missing if n not in existing]
            if still:
                raise InfraError(f"kafka: could not create topics {still}")
            say(f"kafka: created topics {', '.join(missing)} ({partitions} partition(s) each)")
        _grow(admin, [n for n in names if n not in missing], partitions)
        return missing


def _grow(admin, names: list[str], partitions: int) -> None:
    """Existing topics below `partitions` get more. A key's partition is its hash modulo the count,
    so a dataset's events written before the growth may sit on another partition than later ones."""
    fewer = {name: partitions for name, count in _counts(admin, names).items() if count < partitions}
    if fewer:
        admin.create_partitions(fewer, timeout_ms=15000)
        say(f"kafka: grew topics {', '.join(sorted(fewer))} to {partitions} partition(s)")


def partition_counts(cfg: InfraConfig, names: list[str]) -> dict[str, int]:
    """How many partitions each existing topic of `names` has (a missing topic is left out)."""
    with _admin(cfg) as admin:
        return _counts(admin, names)


def _counts(admin, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names) if not t.get("error_code")}


@contextlib.contextmanager
def _admin(cfg: InfraConfig):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(cfg), client_id="flts-infra", request_timeout_ms=15000)
    try:
        yield admin
    finally:
        admin.close()
