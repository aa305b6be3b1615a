#!/usr/bin/env python3
"""Renders deploy/k8s/base offline and checks every object (`make k8s-validate`).

1. Renders the kustomization with a small renderer for the features the base uses
   (resources, namespace, labels, images). Where `kubectl` (or `kustomize`) is
   installed, it renders with that too and fails if the two disagree.
2. Validates each object against the Kubernetes OpenAPI schema of a pinned
   version, strictly (unknown fields are errors), with the PyPI package
   kubernetes-validate, which ships the schemas: no cluster, no network.
3. Checks the suite's own rules: gRPC liveness and readiness probes on the gRPC
   port, requests and limits, non-root, a PodDisruptionBudget per Deployment,
   Services that select real pods, an HPA on the router, a pinned image.

    python scripts/k8s_validate.py [--kubernetes-version 1.31.0] [--out build/k8s.yaml] [DIR]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "deploy" / "k8s" / "base"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}

Obj = dict[str, Any]


class RenderError(Exception):
    pass


def render(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` gives, for the features in SUPPORTED."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise RenderError(f"{kfile}: the offline renderer does not handle {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    namespace = spec.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if namespace and obj["kind"] == "Namespace":
            meta["name"] = namespace
        for group in spec.get("labels", []):
            if group.get("includeSelectors") or group.get("includeTemplates"):
                raise RenderError("labels with includeSelectors/includeTemplates are not handled")
            meta.setdefault("labels", {}).update(group.get("pairs", {}))
        for image in spec.get("images", []):
            for container in _containers(obj):
                name, _, _tag = container.get("image", "").partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    tag = image.get("newTag")
                    digest = image.get("digest")
                    container["image"] = f"{new}@{digest}" if digest else (
                        f"{new}:{tag}" if tag else new)
    return objects


def _containers(obj: Obj) -> Iterable[Obj]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def render_with_tool(directory: Path) -> tuple[str, list[Obj]] | None:
    for tool in (["kubectl", "kustomize"], ["kustomize", "build"]):
        if shutil.which(tool[0]) is None:
            continue
        try:
            out = subprocess.run([*tool, str(directory)], check=True, capture_output=True,
                                 text=True, timeout=60).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            err = getattr(exc, "stderr", "") or exc
            print(f"k8s: `{' '.join(tool)}` failed, using only the offline renderer: {err}")
            continue
        return " ".join(tool), [doc for doc in yaml.safe_load_all(out) if doc]
    return None


def _key(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def compare(ours: list[Obj], theirs: list[Obj]) -> list[str]:
    a = {_key(o): o for o in ours}
    b = {_key(o): o for o in theirs}
    problems = [f"only in the offline render: {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"only in kustomize's render: {k}" for k in sorted(b.keys() - a.keys())]
    problems += [f"{k} differs between the renders" for k in sorted(a.keys() & b.keys())
                 if a[k] != b[k]]
    return problems


def schema_errors(objects: list[Obj], version: str) -> list[str]:
    import kubernetes_validate

    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{_key(obj)}: {path}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.VersionNotSupportedError) as exc:
            problems.append(f"{_key(obj)}: {exc.message}")
    return problems


def suite_rule_errors(objects: list[Obj]) -> list[str]:
    problems: list[str] = []
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    pdb_selectors = [o["spec"]["selector"]["matchLabels"] for o in objects
                     if o["kind"] == "PodDisruptionBudget"]
    if len(deployments) != 4:
        problems.append(f"expected 4 Deployments (router, llm, threads, ledger), got {len(deployments)}")
    for dep in deployments:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if not _matches(dep["spec"]["selector"]["matchLabels"], pod_labels):
            problems.append(f"Deployment {name}: selector does not match its pod labels")
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"Deployment {name}: pod securityContext.runAsNonRoot is not true")
        for c in pod["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                grpc = c.get(probe, {}).get("grpc")
                if not grpc or grpc.get("port") != ports.get("grpc"):
                    problems.append(f"Deployment {name}: {probe} is not a gRPC probe on the grpc port")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    problems.append(f"Deployment {name}: resources.{part} needs cpu and memory")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"Deployment {name}: image {image!r} is not pinned to a tag")
            if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"Deployment {name}: allowPrivilegeEscalation must be false")
        if not any(_matches(sel, pod_labels) for sel in pdb_selectors):
            problems.append(f"Deployment {name}: no PodDisruptionBudget selects its pods")
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector = svc["spec"].get("selector", {})
        if not any(_matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))
                   for d in deployments):
            problems.append(f"Service {svc['metadata']['name']}: selects no Deployment's pods")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    if ("Service", "router-headless") not in names:
        problems.append("no headless Service router-headless for client-side balancing")
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    if not any(h["spec"]["scaleTargetRef"]["name"] == "router" for h in hpas):
        problems.append("no HorizontalPodAutoscaler for the router")
    return problems


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--kubernetes-version", default="1.31.0")
    parser.add_argument("--out", type=Path, help="write the rendered objects here")
    args = parser.parse_args(argv)

    objects = render(args.directory)
    print(f"k8s: rendered {len(objects)} objects from {args.directory.relative_to(ROOT)}"
          " with the offline renderer")
    problems: list[str] = []
    rendered = render_with_tool(args.directory)
    if rendered is None:
        print("k8s: no kubectl/kustomize here: the offline render is the only one")
    else:
        tool, theirs = rendered
        diff = compare(objects, theirs)
        problems += diff
        if not diff:
            print(f"k8s: `{tool}` renders the same {len(theirs)} objects")
    problems += schema_errors(objects, args.kubernetes_version)
    problems += suite_rule_errors(objects)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    for problem in problems:
        print(f"k8s: FAIL {problem}")
    if problems:
        return 1
    kinds = sorted({o["kind"] for o in objects})
    print(f"k8s: {len(objects)} objects valid against the Kubernetes {args.kubernetes_version} "
          f"schema (strict) and the suite's rules ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
