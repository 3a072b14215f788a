"""The manifests a platform team applies once (k8s/); the GPU image recipe is tested in test_container.py.

Every YAML document must parse and be a valid Kubernetes object of its kind for the Kubernetes version
below, validated offline and strictly (unknown fields rejected) by ``kubernetes-validate``. Excluded, with
the reason: ``kustomization.yaml`` (a kustomize file, not an API object). Secret templates must hold
placeholders only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30.0"
NOT_API_OBJECTS = {"kustomization.yaml": "kustomize configuration, not a Kubernetes API object"}
MANIFESTS = sorted(p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml") if p.name not in NOT_API_OBJECTS)


def _docs(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d is not None]


def test_the_expected_manifests_exist():
    kinds = {(d["kind"], d["metadata"]["name"]) for rel in MANIFESTS for d in _docs(rel)}
    for needed in [("Namespace", "ptdpo"), ("ServiceAccount", "ptdpo-metaflow"), ("Role", "ptdpo-metaflow-step"),
                   ("RoleBinding", "ptdpo-metaflow-step"), ("Role", "ptdpo-metaflow-submitter"),
                   ("PersistentVolumeClaim", "ptdpo-model-cache"), ("Secret", "ptdpo-hub-token"),
                   ("Secret", "ptdpo-hint-api"), ("StatefulSet", "metaflow-postgres"),
                   ("Deployment", "metaflow-metadata"), ("Deployment", "metaflow-ui-backend"),
                   ("Deployment", "metaflow-ui")]:
        assert needed in kinds, needed


@pytest.mark.parametrize("rel", MANIFESTS)
def test_manifest_is_valid_kubernetes(rel):
    import kubernetes_validate

    docs = _docs(rel)
    assert docs, f"{rel} holds no objects"
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        assert d["metadata"].get("namespace", "ptdpo") == "ptdpo" or d["kind"] == "Namespace"


def test_the_validator_does_reject_bad_objects():
    import kubernetes_validate

    good = _docs("20-model-cache-pvc.yaml")[0]
    bad = {**good, "spec": {**good["spec"], "accessModes": "ReadWriteMany"}}  # not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    typo = {**good, "spec": {**good["spec"], "storageClassNmae": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_kustomization_lists_every_base_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    base = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == base


def test_secret_templates_hold_placeholders_only():
    for rel in MANIFESTS:
        for d in _docs(rel):
            if d["kind"] != "Secret":
                continue
            assert "data" not in d, f"{rel}: use stringData placeholders, never base64 data"
            for key, value in d["stringData"].items():
                if key in ("POSTGRES_USER", "POSTGRES_DB"):
                    continue
                assert value == "REPLACE-ME", f"{rel}: {d['metadata']['name']}.{key} is not a placeholder"


def test_configs_refer_to_objects_the_manifests_create():
    import json

    names = {(d["kind"], d["metadata"]["name"]) for rel in MANIFESTS for d in _docs(rel)}
    for cfg_path in (ROOT / "configs").glob("qwen3vl-*.json"):
        k8s = json.loads(cfg_path.read_text()).get("kubernetes", {})
        if "service_account" in k8s:
            assert ("ServiceAccount", k8s["service_account"]) in names
        for claim in (k8s.get("persistent_volume_claims") or {}):
            assert ("PersistentVolumeClaim", claim) in names
        secrets = set(k8s.get("secrets") or [])
        for per in (k8s.get("steps") or {}).values():
            secrets |= set(per.get("secrets") or [])
        for s in secrets:
            assert ("Secret", s) in names, s


def test_hint_server_is_sized_for_the_papers_hint_generator():
    """k8s/optional/hint-server.yaml serves the hint generator of the recipes (Qwen3-VL-235B-A22B-Thinking,
    METHOD.md 5) at the Service the openai-endpoint overlay points at, with GPUs for its weights."""
    import json

    docs = {d["kind"]: d for d in _docs("optional/hint-server.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
    recipe = json.loads((ROOT / "configs" / "qwen3vl-2b.json").read_text())["hints"]["generator"]
    overlay = json.loads((ROOT / "configs" / "hints" / "openai-endpoint.json").read_text())["hints"]["generator"]
    assert args[0] == recipe["model"] == overlay["model"] == "Qwen/Qwen3-VL-235B-A22B-Thinking"
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == int(flags["tensor-parallel-size"]) == recipe["tensor_parallel_size"] == 8
    assert int(flags["max-model-len"]) == recipe["max_model_len"] >= recipe["max_tokens"] + 8192
    assert json.loads(flags["mm-processor-kwargs"]) == recipe["mm_processor_kwargs"]
    # 235e9 BF16 parameters on the GPUs at the memory utilisation asked, with at least 8 GB per GPU left for
    # the KV cache and the vision tower (80 GB GPUs: H100; an H200 has more)
    weights_gb, gpu_gb = 235e9 * 2 / 1e9, 80
    assert gpus * gpu_gb * float(flags["gpu-memory-utilization"]) - weights_gb >= 8 * gpus
    port = docs["Service"]["spec"]["ports"][0]["port"]
    assert overlay["base_url"] == f"http://{docs['Service']['metadata']['name']}.ptdpo.svc.cluster.local:{port}/v1"
    assert int(flags["port"]) == container["ports"][0]["containerPort"] == port
    assert {"ptdpo-hint-api", "ptdpo-hub-token"} == {e["secretRef"]["name"] for e in container["envFrom"]}
