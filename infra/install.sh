#!/usr/bin/env bash
# Install the binaries of the local full stack (no Docker), cached and idempotent:
#   - Apache Kafka (KRaft) jars from Maven Central      -> $FLTS_CACHE/kafka/libs
#   - versitygw S3 server (go install), s3proxy fallback -> $FLTS_CACHE/bin/versitygw
#   - PostgreSQL server from Debian packages             -> /usr/lib/postgresql/*/bin
#   - Chromium from Debian packages (the status-page test) -> /usr/bin/chromium
# and what checks the deployment manifests with upstream code (tests/test_deploy_upstream.py):
#   - etcd from Debian packages (etcd-server)           -> /usr/bin/etcd
#   - kube-apiserver built from k8s.io/kubernetes        -> $FLTS_CACHE/bin/kube-apiserver
#     (deploy/checks/kube-apiserver; 3-4 min on 2 cores the first time)
#   - Knative's webhook code, built                      -> $FLTS_CACHE/bin/flts-knative-check
#     (deploy/checks/knative; 1-2 min the first time)
#   - a Go toolchain when none (>= 1.21) is installed: Debian's golang-go bootstraps the
#     golang.org/toolchain module from the Go module proxy -> $FLTS_CACHE/go
# A second run only checks stamps and takes a couple of seconds.
#
# Env: FLTS_CACHE (default ~/.cache/flts), FLTS_SKIP_POSTGRES=1, FLTS_SKIP_KAFKA=1,
#      FLTS_SKIP_S3=1, FLTS_SKIP_CHROMIUM=1, FLTS_SKIP_CHECKS=1 (no etcd/kube-apiserver/Knative checker: their
#      tests then fail), FLTS_FORCE=1 (ignore the stamps and reinstall),
#      FLTS_S3_SERVER=s3proxy (install the Java fallback S3 server instead of versitygw),
#      FLTS_GO_TOOLCHAIN (default go1.26.8: the toolchain fetched when no Go is installed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FLTS_CACHE:-$HOME/.cache/flts}"
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.7.0}"
GO_TOOLCHAIN="${FLTS_GO_TOOLCHAIN:-go1.26.8}"
S3PROXY_VERSION="${S3PROXY_VERSION:-2.6.0}"
MVN_DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
mkdir -p "$CACHE/bin"

say() { printf '%s\n' "$*" >&2; }
nocolor() { sed -u 's/\x1b\[[0-9;]*m//g'; }  # maven 3.8 prints colour resets even with -B
die() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }
stamp_ok() { [[ -z "${FLTS_FORCE:-}" && -f "$1" && "$(cat "$1")" == "$2" ]]; }

# ---------------------------------------------------------------- Java / Kafka
install_kafka() {
    local pom="$HERE/kafka/pom.xml" libs="$CACHE/kafka/libs"
    local want; want="$(sha256sum "$pom" | cut -d' ' -f1)"
    if stamp_ok "$libs/.stamp" "$want"; then
        say "kafka: cached ($(ls "$libs"/kafka_2.13-*.jar | sed 's/.*kafka_2.13-//; s/\.jar$//'), $libs)"
        return
    fi
    command -v java >/dev/null 2>&1 \
        || die "java is missing: Kafka 4.x needs Java 17 or newer (Debian: apt-get install -y openjdk-17-jre-headless)"
    local jv; jv="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [[ -n "$jv" && "$jv" -ge 17 ]] \
        || die "Java $jv found, Kafka 4.x needs Java 17 or newer (apt-get install -y openjdk-17-jre-headless)"
    command -v mvn >/dev/null 2>&1 || die "mvn is missing (Debian: apt-get install -y maven)"
    say "kafka: resolving jars from Maven Central (java $jv) ..."
    local tmp="$CACHE/kafka/libs.tmp"
    rm -rf "$tmp"; mkdir -p "$tmp"
    mvn -B -q -Dstyle.color=never -f "$pom" -Dmaven.repo.local="$CACHE/m2" \
        "$MVN_DEP_PLUGIN:copy-dependencies" -DoutputDirectory="$tmp" -DincludeScope=runtime 2>&1 | nocolor \
        || die "maven could not copy the Kafka jars (see the output above)"
    # slf4j binding must match the slf4j-api that Kafka brought in.
    if ls "$tmp"/slf4j-api-2.* >/dev/null 2>&1 && ! ls "$tmp"/log4j-slf4j2-impl-* >/dev/null 2>&1; then
        die "Kafka now brings slf4j-api 2.x: switch log4j-slf4j-impl to log4j-slf4j2-impl in $pom"
    fi
    echo "$want" > "$tmp/.stamp"
    rm -rf "$libs"; mv "$tmp" "$libs"
    say "kafka: $(ls "$libs"/*.jar | wc -l) jars in $libs ($(cd "$libs" && ls slf4j-api-* log4j-slf4j*-impl-* | tr '\n' ' '))"
}

# ---------------------------------------------------------------- S3 server
install_s3proxy() {
    local dir="$CACHE/s3proxy" want="s3proxy-$S3PROXY_VERSION"
    if stamp_ok "$dir/.stamp" "$want"; then say "s3proxy: cached ($dir)"; return; fi
    command -v mvn >/dev/null 2>&1 || die "mvn is missing (Debian: apt-get install -y maven)"
    say "s3proxy: fetching org.gaul:s3proxy:$S3PROXY_VERSION (jar-with-dependencies) from Maven Central ..."
    mkdir -p "$dir"
    mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$CACHE/m2" "$MVN_DEP_PLUGIN:copy" \
        -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies" \
        -DoutputDirectory="$dir" -Dmdep.stripVersion=true -Dmdep.stripClassifier=true 2>&1 | nocolor \
        || die "s3proxy could not be fetched either: no S3 server available"
    echo "$want" > "$dir/.stamp"
    say "s3proxy: installed $dir/s3proxy.jar"
}

install_versitygw() {
    local bin="$CACHE/bin/versitygw" stamp="$CACHE/bin/.versitygw-version"
    if [[ -x "$bin" ]] && stamp_ok "$stamp" "$VERSITYGW_VERSION"; then
        say "versitygw: cached ($VERSITYGW_VERSION, $bin)"; return
    fi
    if ! command -v go >/dev/null 2>&1; then
        say "versitygw: Go is missing (versitygw $VERSITYGW_VERSION needs Go >= 1.25); falling back to s3proxy"
        install_s3proxy; return
    fi
    say "versitygw: building $VERSITYGW_VERSION with $(go version | cut -d' ' -f3) (a few minutes on 2 cores) ..."
    if GOBIN="$CACHE/bin" CGO_ENABLED=0 GOFLAGS=-trimpath \
        go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"; then
        echo "$VERSITYGW_VERSION" > "$stamp"
        say "versitygw: installed $bin"
    else
        say "versitygw: go install failed; falling back to s3proxy"
        install_s3proxy
    fi
}

# ---------------------------------------------------------------- Debian packages
apt_install() {  # apt_install PACKAGE: install one Debian package (apt-get update only when needed)
    local pkg=$1
    command -v apt-get >/dev/null 2>&1 || die "$pkg is missing and apt-get is not available"
    [[ "$(id -u)" == 0 ]] || die "$pkg is missing: run as root or 'sudo apt-get install -y $pkg'"
    say "$pkg: installing Debian package ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -qq
    fi
    apt-get install -y -qq "$pkg" >/dev/null || die "apt-get install $pkg failed"
}

# wrk: the load generator of `flts bench` (Apache-2.0; k6 is AGPL and never installed here)
install_wrk() {
    if command -v wrk >/dev/null 2>&1; then say "wrk: present"; return; fi
    apt_install wrk
}

# chromium: the headless browser of the status-page test (tests/test_gateway_stack.py)
install_chromium() {
    if command -v chromium >/dev/null 2>&1; then say "chromium: present"; return; fi
    apt_install chromium
}

# ---------------------------------------------------------------- PostgreSQL
install_postgres() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | while read -r d; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && echo "$d"; done | tail -1)"
    if [[ -n "$found" ]]; then say "postgres: present ($found)"; return; fi
    apt_install postgresql
    # The Debian package may create and start a system cluster: we never use it.
    say "postgres: installed ($(ls -d /usr/lib/postgresql/*/bin | tail -1))"
}

# ---------------------------------------------------------------- manifest checks (upstream code)
install_etcd() {
    if command -v etcd >/dev/null 2>&1; then say "etcd: present ($(command -v etcd))"; return; fi
    apt_install etcd-server
    # The package may enable a system etcd on :2379; the checks start their own on free ports.
    if [[ -d /run/systemd/system ]]; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
    say "etcd: installed ($(etcd --version | head -1))"
}

go_usable() {  # go_usable GO: a Go that can switch toolchains itself (>= 1.21) and build modules
    local v; v="$("$1" env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
    [[ -n "$v" && "$v" -ge 21 ]]
}

ensure_go() {  # sets GO: the go command the checks are built with
    GO="$(command -v go || true)"
    if [[ -n "$GO" ]] && go_usable "$GO"; then return; fi
    local dir="$CACHE/go/$GO_TOOLCHAIN"
    GO="$dir/bin/go"
    if [[ -x "$GO" ]]; then return; fi
    # No Go (or one too old to fetch toolchains): Debian's golang-go downloads the toolchain
    # as the Go module golang.org/toolchain, from the Go module proxy.
    local boot; boot="$(command -v go || true)"
    if [[ -z "$boot" ]]; then apt_install golang-go; boot="$(command -v go)"; fi
    local module="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')"
    say "go: fetching $module with $("$boot" version | cut -d' ' -f3) ..."
    local modcache="$CACHE/go/modcache"
    GOMODCACHE="$modcache" GOFLAGS=-modcacherw GOTOOLCHAIN=local "$boot" mod download "$module" \
        || die "could not fetch the Go toolchain $module from the Go module proxy"
    mkdir -p "$CACHE/go"
    rm -rf "$dir.tmp"; cp -a "$modcache/$module" "$dir.tmp"; mv "$dir.tmp" "$dir"
    chmod +x "$dir/bin/"* "$dir/pkg/tool/"*/* 2>/dev/null || true
    unset GOROOT  # the bootstrap's; the fetched toolchain finds its own
    "$GO" version >/dev/null || die "the fetched Go toolchain does not run: $GO"
}

# build_check NAME DIR PACKAGE [LDFLAGS]: go build a check program of deploy/checks/ into $CACHE/bin,
# again only when its sources (go.mod, go.sum, *.go) or the Go version change.
build_check() {
    local name=$1 dir="$HERE/../deploy/checks/$2" package=$3 ldflags="${4:-}"
    local bin="$CACHE/bin/$name" stamp="$CACHE/bin/.$name-stamp" want
    want="$(cd "$dir" && cat go.mod go.sum $(ls *.go 2>/dev/null) | sha256sum | cut -d' ' -f1) $("$GO" env GOVERSION)"
    if [[ -x "$bin" ]] && stamp_ok "$stamp" "$want"; then say "$name: cached ($bin)"; return; fi
    say "$name: building $package with $("$GO" env GOVERSION) (deploy/checks/$2) ..."
    local started=$SECONDS
    (cd "$dir" && CGO_ENABLED=0 "$GO" build -mod=readonly -trimpath -ldflags "-s -w $ldflags" -o "$bin.tmp" "$package") \
        || die "go build of $package failed (see above)"
    mv "$bin.tmp" "$bin"
    echo "$want" > "$stamp"
    say "$name: built in $((SECONDS - started))s ($bin)"
}

install_checks() {
    install_etcd
    ensure_go
    local k8s; k8s="$(sed -n 's/^\tk8s.io\/kubernetes \(v[0-9.]*\).*/\1/p' "$HERE/../deploy/checks/kube-apiserver/go.mod")"
    [[ -n "$k8s" ]] || die "no k8s.io/kubernetes version in deploy/checks/kube-apiserver/go.mod"
    local minor="${k8s#v1.}"; minor="${minor%%.*}"
    build_check kube-apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver \
        "-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    build_check flts-knative-check knative .
}

t0=$(date +%s%N)
[[ -n "${FLTS_SKIP_KAFKA:-}" ]] || install_kafka
if [[ -z "${FLTS_SKIP_S3:-}" ]]; then
    if [[ "${FLTS_S3_SERVER:-}" == s3proxy ]]; then install_s3proxy; else install_versitygw; fi
fi
[[ -n "${FLTS_SKIP_POSTGRES:-}" ]] || install_postgres
[[ -n "${FLTS_SKIP_WRK:-}" ]] || install_wrk
[[ -n "${FLTS_SKIP_CHROMIUM:-}" ]] || install_chromium
[[ -n "${FLTS_SKIP_CHECKS:-}" ]] || install_checks
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
say "infra: installed in $((ms / 1000)).$(( (ms % 1000) / 100 ))s (cache $CACHE)"
