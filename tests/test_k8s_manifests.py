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
