"""The generated manifests checked by upstream code: Knative's webhooks and a real kube-apiserver.

    knative_webhook_errors(objects)   Knative's own SetDefaults + Validate on every object
                                      (deploy/checks/knative, Go, at the CRDs' versions)
    KubeAPIServer()                   etcd + kube-apiserver (deploy/checks/kube-apiserver) on
                                      free local ports, the CRDs installed; dry_run(obj) is
                                      `kubectl apply --dry-run=server --validate=strict`

The binaries are built by infra/install.sh into $FLTS_CACHE/bin (etcd is Debian's
etcd-server); a missing one is an error naming the install step, never a silent skip.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from flts.dev import processes
from flts.dev.infra.config import InfraConfig
from flts.dev.testing import free_port

KNATIVE_CHECK = "flts-knative-check"
KUBE_APISERVER = "kube-apiserver"
NAMESPACE = "flts"  # where docs/deploy.md applies the files (kubectl -n flts)
_TOKEN = "flts-check"  # a static bearer token of the throwaway API server


class MissingTool(RuntimeError):
    """A binary the upstream checks need is not installed."""


def tool(name: str) -> Path:
    """Path of a binary infra/install.sh builds ($FLTS_CACHE/bin) or installs (etcd, on PATH)."""
    built = InfraConfig().cache_dir / "bin" / name
    found = built if built.is_file() else shutil.which(name)
    if not found:
        raise MissingTool(f"{name} is not installed ({built} nor on PATH): run `make infra` (bash infra/install.sh)")
    return Path(found)


# --------------------------------------------------------------------------- Knative's webhooks
def knative_webhook_results(objects: Iterable[dict], namespace: str = NAMESPACE) -> list[dict]:
    """One result per object from deploy/checks/knative: file, kind, name, status, errors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "objects.yaml"
        path.write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
        run = subprocess.run([str(tool(KNATIVE_CHECK)), "-namespace", namespace, str(path)],
                             capture_output=True, text=True, timeout=120)
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode not in (0, 1) or not results:
        raise RuntimeError(f"{KNATIVE_CHECK} failed (exit {run.returncode}): {run.stderr[-2000:]}")
    return results


def knative_webhook_errors(objects: Iterable[dict], namespace: str = NAMESPACE) -> list[str]:
    """`<Kind> '<name>': <webhook>: <message>` for every object a Knative webhook refuses."""
    return [f"{r['kind']} {r['name']!r}: {error}" for r in knative_webhook_results(objects, namespace)
            for error in r.get("errors", [])]


def knative_versions() -> dict[str, str]:
    """The Knative module versions built into the checker."""
    run = subprocess.run([str(tool(KNATIVE_CHECK)), "-versions"], capture_output=True, text=True, timeout=30)
    return json.loads(run.stdout)


# --------------------------------------------------------------------------- kube-apiserver
def _rsa_key_pem() -> bytes:
    """A throwaway key the API server signs (and checks) service-account tokens with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class KubeAPIServer:
    """A throwaway etcd + kube-apiserver: every process it starts stops when the with-block ends."""

    def __init__(self, crds: Iterable[Path], workdir: Path | None = None, start_timeout: float = 60.0):
        self.crds = list(crds)
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.url = ""
        self._discovered: dict[tuple[str, str], tuple[str, str, bool]] = {}

    # ------------------------------------------------------------ lifecycle
    @contextlib.contextmanager
    def running(self) -> Iterator[KubeAPIServer]:
        with contextlib.ExitStack() as stack:
            work = self.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flts-apiserver-")))
            etcd_url = stack.enter_context(self._etcd(work))
            stack.enter_context(self._apiserver(work, etcd_url))
            for crd in self.crds:
                self.create_all(yaml.safe_load_all(crd.read_text()))
            self._wait_established()
            yield self

    @contextlib.contextmanager
    def _etcd(self, work: Path) -> Iterator[str]:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        command = [str(tool("etcd")), "--name", "flts-check", "--data-dir", str(work / "etcd"),
                   "--listen-client-urls", url, "--advertise-client-urls", url,
                   "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
                   f"http://127.0.0.1:{peer}", "--initial-cluster", f"flts-check=http://127.0.0.1:{peer}"]
        with processes.running(command, ready_url=f"{url}/health", log_path=work / "etcd.log",
                               timeout=self.start_timeout, what="etcd"):
            yield url

    @contextlib.contextmanager
    def _apiserver(self, work: Path, etcd_url: str) -> Iterator[None]:
        self._work = work
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        key = work / "service-account.key"
        key.write_bytes(_rsa_key_pem())
        (work / "tokens.csv").write_text(f'{_TOKEN},flts-check,flts-check,"system:masters"\n')
        command = [str(tool(KUBE_APISERVER)), "--etcd-servers", etcd_url, "--bind-address", "127.0.0.1",
                   "--secure-port", str(port), "--cert-dir", str(work / "certs"),
                   "--token-auth-file", str(work / "tokens.csv"), "--authorization-mode", "AlwaysAllow",
                   "--service-account-issuer", "https://kubernetes.default.svc",
                   "--service-account-key-file", str(key), "--service-account-signing-key-file", str(key),
                   "--service-cluster-ip-range", "10.96.0.0/16", "--enable-priority-and-fairness=false"]
        log = work / "kube-apiserver.log"
        with processes.running(command, log_path=log, what="kube-apiserver") as proc:
            processes.wait_until(lambda: self._get("/readyz")[0] == 200, self.start_timeout, proc=proc,
                                 what="kube-apiserver", log_path=log, interval=0.2)
            yield

    # ------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, list[str]]:
        import httpx  # tooling only

        response = httpx.request(method, self.url + path, json=body, verify=False, timeout=30,
                                 headers={"Authorization": f"Bearer {_TOKEN}"})
        try:
            payload = response.json()
        except ValueError:
            payload = {"message": response.text}
        return response.status_code, payload, response.headers.get_list("warning")

    def _get(self, path: str) -> tuple[int, dict]:
        status, payload, _ = self._request("GET", path)
        return status, payload

    def _resource(self, api_version: str, kind: str) -> tuple[str, str, bool]:
        """(group-version path, plural, namespaced) of a kind, from API discovery, as kubectl finds it."""
        if (api_version, kind) not in self._discovered:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, listing = self._get(base)
            for resource in listing.get("resources", []) if status == 200 else []:
                if "/" not in resource["name"]:  # not a subresource
                    self._discovered[(api_version, resource["kind"])] = (base, resource["name"], resource["namespaced"])
        if (api_version, kind) not in self._discovered:
            raise LookupError(f"the API server serves no {kind} in {api_version}")
        return self._discovered[(api_version, kind)]

    def _collection(self, obj: dict, namespace: str) -> str:
        base, plural, namespaced = self._resource(obj["apiVersion"], obj["kind"])
        ns = obj.get("metadata", {}).get("namespace") or namespace
        return f"{base}/namespaces/{ns}/{plural}" if namespaced else f"{base}/{plural}"

    # ------------------------------------------------------------ objects
    def create_all(self, objects: Iterable[dict | None]) -> None:
        """Create objects for real (CRDs, namespaces); an object that exists already is fine."""
        for obj in filter(None, objects):
            status, payload, _ = self._request("POST", self._collection(obj, "default"), obj)
            if status not in (200, 201, 409):
                raise RuntimeError(f"creating {obj['kind']} {obj['metadata']['name']}: {payload.get('message')}")

    def _wait_established(self, timeout: float = 30.0) -> None:
        def established() -> bool:
            status, crds = self._get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
            conditions = [c for crd in crds.get("items", []) for c in crd.get("status", {}).get("conditions", [])
                          if c["type"] == "Established"]
            return status == 200 and len(conditions) == len(crds["items"]) and all(
                c["status"] == "True" for c in conditions)

        processes.wait_until(established, timeout, what="the CRDs", interval=0.2)
        time.sleep(0.5)  # discovery follows the Established condition by a moment

    def namespace(self, name: str) -> None:
        self.create_all([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])

    @property
    def ca_file(self) -> Path:
        """The certificate chain the server's self-signed HTTPS certificate is checked with."""
        return self._work / "certs" / "apiserver.crt"

    def service_account_dir(self, path: Path, namespace: str, account: str = "default") -> Path:
        """What a pod of `account` has mounted at /var/run/secrets/kubernetes.io/serviceaccount."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "token").write_text(self.token(namespace, account))
        (path / "ca.crt").write_bytes(self.ca_file.read_bytes())
        (path / "namespace").write_text(namespace)
        return path

    def token(self, namespace: str, account: str, audience: str | None = None, seconds: int = 600) -> str:
        """A token the server signs for a service account (TokenRequest, as the kubelet and Knative
        ask for one); the account is created when missing. No audience: the server's own."""
        self.create_all([{"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": account, "namespace": namespace}}])
        spec: dict = {"expirationSeconds": seconds, **({"audiences": [audience]} if audience else {})}
        status, payload, _ = self._request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                            "spec": spec})
        if status != 201:
            raise RuntimeError(f"TokenRequest for {namespace}/{account}: {status} {payload.get('message')}")
        return payload["status"]["token"]

    def dry_run(self, obj: dict, namespace: str = NAMESPACE) -> list[str]:
        """What `kubectl apply --dry-run=server --validate=strict` reports for the object (create):
        the refusal, and any warning the server sends (deprecations, ...); [] when accepted."""
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')!r}"
        try:
            path = self._collection(obj, namespace)
        except LookupError as exc:
            return [f"{where}: {exc}"]
        status, payload, warnings = self._request("POST", f"{path}?dryRun=All&fieldValidation=Strict", obj)
        problems = [f"{where}: warning: {w}" for w in warnings]
        if status not in (200, 201):
            problems.append(f"{where}: {status} {payload.get('message')}")
        return problems
