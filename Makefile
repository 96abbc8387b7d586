# sidekey — developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# The fuzz targets are a workspace of their own (fuzz/Cargo.toml); they share the target dir.
FUZZ := --manifest-path fuzz/Cargo.toml --target-dir $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

.PHONY: demo test setup fmt fmt-check lint unit build install docs docs-test crds manifests validate dist images images-docker e2e e2e-long bench fuzz clean

## demo: a real OpenID provider, a demo app and sidekey-proxy on 127.0.0.1 (Ctrl-C stops it).
## Needs Rust and Node.js only; the first (cold) build takes several minutes.
demo:
	@tests/setup.sh demo
	$(CARGO) build -p sidekey-proxy -p sidekey-controller
	@scripts/demo.sh

## test: installs the test peers, then fmt, clippy and every test (the controller's against
## a real Kubernetes API server that tests/k8s/with-cluster.sh starts from ../shared/kube)
test: setup fmt-check lint
	$(CARGO) build -p sidekey-proxy -p sidekey-controller
	scripts/demo.sh --smoke
	tests/demo/busy_port_test.sh
	tests/k8s/with-cluster.sh $(CARGO) test --workspace --all-targets
	tests/k8s/validate.sh
	scripts/dist.sh
	tests/dist_test.sh
	tests/images_test.py
	$(CARGO) test -p sidekey-controller --test e2e --no-run
	tests/e2e/with-node.sh $(CARGO) test -p sidekey-controller --test e2e -- --nocapture
	prefix=$$(mktemp -d) && $(MAKE) --no-print-directory install PREFIX=$$prefix && \
	  $$prefix/bin/sidekey-proxy --version && $$prefix/bin/sidekey-controller --version && rm -rf $$prefix
	$(CARGO) test $(FUZZ) --no-default-features
	tests/docs/shell_blocks.py

setup:
	@tests/setup.sh

build:
	$(CARGO) build --workspace

## install: the release binaries of `make dist` (the ones the images ship) into $(PREFIX)/bin;
## the default, ~/.cargo/bin, is on PATH wherever rustup is. PREFIX=/usr/local for all users.
PREFIX ?= $(HOME)/.cargo
install: dist
	install -d $(PREFIX)/bin
	install -m 0755 dist/linux-$(ARCH)/sidekey-proxy dist/linux-$(ARCH)/sidekey-controller $(PREFIX)/bin/
	@echo "installed sidekey-proxy and sidekey-controller $(VERSION) into $(PREFIX)/bin"

## docs-test: every shell block of README.md and docs/ that runs offline, as written, with the
## target/debug binaries on PATH (a block that cannot is skipped only by a marker; tests/docs/)
docs-test:
	$(CARGO) build -p sidekey-proxy -p sidekey-controller
	tests/docs/shell_blocks.py

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(FUZZ) --all-targets --no-default-features -- -D warnings
	scripts/file_sizes.sh

## docs: regenerate docs/configuration.md from the option table
docs:
	SIDEKEY_UPDATE_DOCS=1 $(CARGO) test -p sidekey-proxy --lib config::tests::configuration_doc_is_current

## crds: regenerate crds/ (and the chart's copy), the golden render outputs, the proxy flag list and manifests/install
crds:
	$(CARGO) run -q -p sidekey-controller --bin sidekey-controller -- crd > crds/sidekey.dev_authpolicies.yaml
	cp crds/sidekey.dev_authpolicies.yaml charts/sidekey/files/
	SIDEKEY_UPDATE_GOLDEN=1 $(CARGO) test -q -p sidekey-controller --test render
	SIDEKEY_UPDATE_GOLDEN=1 $(CARGO) test -q -p sidekey-controller --test validate committed_proxy_flag_list_is_current
	$(MAKE) manifests

## manifests: regenerate manifests/install (the chart's default render) and the argocd-cm snippet
manifests: setup
	.tools/venv/bin/python tests/k8s/chart_test.py --update
	.tools/venv/bin/python tests/k8s/argocd_health_test.py --update

## validate: rendered objects, the chart and the install against the official schemas
validate: setup
	tests/k8s/validate.sh

## bench: sidekey-proxy vs nginx and the direct path with wrk, written to BENCHMARKS.md
bench:
	bench/run.sh

## fuzz: every cargo-fuzz target under libFuzzer for FUZZ_SECONDS (default 120) each
## (`make test` replays their seeds and a fixed set of mutants without libFuzzer)
fuzz:
	scripts/fuzz.sh

## dist: static release binaries in dist/linux-<arch>/ (what the images copy)
dist:
	scripts/dist.sh

ARCH := $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(shell uname -m)))
VERSION := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
REGISTRY ?= ghcr.io/sidekey-dev

## images: the two container images from dist/ as OCI archives in dist/images/ (no container
## engine needed: scripts/images.py builds what the Dockerfile says; docs/install.md)
images: dist
	scripts/images.py --registry $(REGISTRY) --tag v$(VERSION)

## images-docker: the same two images with `docker build` of the Dockerfile (needs a Docker
## engine and gcr.io/distroless/static), into the engine's image store
images-docker: dist
	@docker info >/dev/null 2>&1 || { echo "images-docker: no container engine answers 'docker info'; use make images" >&2; exit 1; }
	for image in sidekey-proxy sidekey-controller; do \
	  docker build --target $$image --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) \
	    -t $(REGISTRY)/$$image:v$(VERSION) . || exit 1; \
	done
	docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '$(REGISTRY)/sidekey-'

## e2e: the whole product on a real single-node Kubernetes (../shared/kube, root): the images,
## helm install, an app behind an AuthPolicy, browser logins through its ClusterIP, uninstall
e2e: setup
	$(CARGO) test -p sidekey-controller --test e2e --no-run
	tests/e2e/with-node.sh $(CARGO) test -p sidekey-controller --test e2e -- --nocapture

## e2e-long: the same node, the scenarios too slow for every run (the kubelet rotating a
## workload identity token: about 11 minutes)
e2e-long: setup
	$(CARGO) test -p sidekey-controller --test e2e --no-run
	tests/e2e/with-node.sh $(CARGO) test -p sidekey-controller --test e2e -- --nocapture --ignored

clean:
	$(CARGO) clean
	rm -rf dist
