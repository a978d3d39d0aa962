#!/usr/bin/env python3
"""Shows that scripts/validate-deploy fails when it should: each case copies deploy/,
breaks one thing, runs the validator on the copy and expects it to exit non-zero with a
FAIL line containing the expected words. A case whose edit no longer applies (the
manifests changed) fails too, so the cases cannot silently stop testing anything.

Usage: selftest.py REPO   (scripts/validate-deploy runs it after validating deploy/)
"""

import concurrent.futures
import pathlib
import shutil
import subprocess
import sys
import tempfile

# (name, file under deploy/, text to find, replacement, words the FAIL line must contain)
CASES = [
    ("an alert rule on an invented metric", "prometheus/ymera-alerts.yaml",
     "rate(ymera_dlq_events_total[5m])", "rate(ymera_dead_letters_total[5m])",
     "metric ymera_dead_letters_total is not emitted anywhere in crates/"),
    ("an alert rule without a severity", "prometheus/ymera-alerts.yaml",
     "        for: 5m\n        labels:\n          severity: critical\n", "        for: 5m\n        labels:\n          team: data\n",
     "labels.severity: must be info, warning or critical"),
    ("unknown field in a container", "base/serve.yaml",
     "          imagePullPolicy: IfNotPresent\n          args: [\"--config\", \"/etc/ymera/ymera.yaml\", \"serve\"]",
     "          imagePullPolicy: IfNotPresent\n          restartPolicyy: Always\n          args: [\"--config\", \"/etc/ymera/ymera.yaml\", \"serve\"]",
     "Deployment ymera-serve: spec.template.spec.containers[0]: Additional properties are not allowed ('restartPolicyy'"),
    ("unknown field in the ScaledObject", "components/keda-autoscale/scaledobject.yaml",
     "    failureThreshold: 3\n", "    failureThreshold: 3\n    failureTreshold: 3\n",
     "ScaledObject ymera-dev/checkout-api: spec.fallback: Additional properties are not allowed ('failureTreshold'"),
    ("unknown field in the TriggerAuthentication", "components/keda-autoscale/triggerauthentication.yaml",
     "      key: token\n", "      key: token\n      optional: true\n",
     "TriggerAuthentication ymera-dev/ymera-autoscaler: spec.secretTargetRef[0]: Additional properties are not allowed ('optional'"),
    ("a password in the ConfigMap's ymera.yaml", "base/config/ymera.yaml",
     "lake:\n", "warehouse:\n  url: postgres://ymera:hunter2@db:5432/ymera\nlake:\n",
     "data.ymera.yaml: warehouse.url: the value looks like a URL with a password"),
    ("a credential in the env ConfigMap", "base/config/ymera.env",
     "AWS_REGION=eu-central-1\n", "AWS_REGION=eu-central-1\nAWS_SECRET_ACCESS_KEY=abc123\n",
     "data.AWS_SECRET_ACCESS_KEY: the name `AWS_SECRET_ACCESS_KEY` looks like a credential"),
    ("a credential as a literal container env", "base/run.yaml",
     "            - name: YMERA__RUN__LISTEN\n              value: 0.0.0.0:9464\n",
     "            - name: YMERA__RUN__LISTEN\n              value: 0.0.0.0:9464\n            - name: KAFKA_PASSWORD\n              value: hunter2\n",
     "env[1] (KAFKA_PASSWORD): the name `KAFKA_PASSWORD` looks like a credential"),
    ("a container without readiness probe", "base/serve.yaml",
     "          readinessProbe:\n            httpGet:\n              path: /health/ready\n              port: http\n            periodSeconds: 5\n            timeoutSeconds: 2\n            failureThreshold: 2\n",
     "", "spec.template.spec.containers[0].readinessProbe: container serve has no readinessProbe"),
    ("a liveness route that does not exist", "base/serve.yaml",
     "              path: /health\n", "              path: /health/live\n",
     "livenessProbe.httpGet.path: /health/live is not a route of crates/serve/src/health.rs"),
    ("a writable root filesystem", "base/run.yaml",
     "            readOnlyRootFilesystem: true\n", "            readOnlyRootFilesystem: false\n",
     "securityContext.readOnlyRootFilesystem: container run must have a read-only root filesystem"),
    ("capabilities not dropped", "base/serve.yaml",
     "              drop: [\"ALL\"]\n", "              drop: [\"NET_RAW\"]\n",
     "securityContext.capabilities.drop: container serve must drop ALL capabilities"),
    ("no limits", "overlays/dev/checkout-api.yaml",
     "            limits:\n              cpu: 200m\n              memory: 64Mi\n", "",
     "Deployment ymera-dev/checkout-api: spec.template.spec.containers[0].resources.limits.cpu: container checkout-api sets no limits cpu"),
    ("no /tmp emptyDir", "base/run.yaml",
     "            - name: tmp\n              mountPath: /tmp\n", "",
     "container run needs an emptyDir mounted at /tmp"),
    ("run left on loopback", "base/run.yaml",
     "            - name: YMERA__RUN__LISTEN\n              value: 0.0.0.0:9464\n", "            - name: RUST_BACKTRACE\n              value: \"1\"\n",
     "(run.listen): listens on 127.0.0.1:9464"),
    ("a service account token mounted", "base/serviceaccount.yaml",
     "automountServiceAccountToken: false\n", "automountServiceAccountToken: true\n",
     "ServiceAccount ymera: automountServiceAccountToken: must be false"),
    ("a formula without the current load", "components/keda-autoscale/scaledobject.yaml",
     'formula: "max(forecast, current)"', 'formula: "forecast"',
     "spec.advanced.scalingModifiers.formula: does not use trigger `current`"),
    ("a formula naming a trigger that does not exist", "components/keda-autoscale/scaledobject.yaml",
     'formula: "max(forecast, current)"', 'formula: "max(forecast, current, predicted)"',
     "`predicted` is not a trigger name"),
    ("a target that is not the per-replica capacity", "components/keda-autoscale/scaledobject.yaml",
     '        valueLocation: keda.value\n        targetValue: "50"\n', '        valueLocation: keda.value\n        targetValue: "40"\n',
     "spec.triggers[0].metadata.targetValue: 40 differs from"),
    ("the wrong value location", "components/keda-autoscale/scaledobject.yaml",
     "valueLocation: keda.value", "valueLocation: keda.recommended_replicas",
     "spec.triggers[0].metadata.valueLocation: must be keda.value"),
    ("no bearer auth for the forecast", "components/keda-autoscale/scaledobject.yaml",
     "        authMode: bearer\n", "",
     "spec.triggers[0].metadata.authMode: the forecast endpoint needs `authMode: bearer`"),
    ("a Value trigger with fallback", "components/keda-autoscale/scaledobject.yaml",
     "      type: prometheus\n      metricType: AverageValue\n", "      type: prometheus\n      metricType: Value\n",
     "spec.triggers[1].metricType: must be AverageValue when fallback is set"),
    ("ymera-run with a second, lag trigger", "components/keda-ymera-run/scaledobject.yaml",
     "      authenticationRef:\n        name: ymera-run-autoscaler\n",
     "      authenticationRef:\n        name: ymera-run-autoscaler\n    - name: lag\n      type: kafka\n      metricType: AverageValue\n      metadata:\n        bootstrapServers: kafka:9092\n        consumerGroup: ymera-metric_events\n        topic: metric-events\n        lagThreshold: \"1000\"\n",
     "ymera-run scales on one trigger"),
    ("ymera-run stepping up by percent", "components/keda-ymera-run/scaledobject.yaml",
     "        scaleUp:\n          stabilizationWindowSeconds: 0\n          policies:\n            - type: Pods\n              value: 12\n",
     "        scaleUp:\n          stabilizationWindowSeconds: 0\n          policies:\n            - type: Percent\n              value: 100\n",
     "behavior.scaleUp: needs a Pods policy of at least maxReplicaCount (12)"),
    ("ymera-run capped above its setting", "components/keda-ymera-run/scaledobject.yaml",
     "  maxReplicaCount: 12\n", "  maxReplicaCount: 16\n",
     "spec.maxReplicaCount: 16 differs from autoscale.services.ymera-run.max_replicas = 12"),
    ("a Secret reference with a typo", "base/serve.yaml",
     "            - secretRef:\n                name: ymera-s3\n", "            - secretRef:\n                name: ymera-s4\n",
     "containers.serve.envFrom: refers to Secret ymera-s4, which the render does not contain"),
    ("a Service selecting nothing", "base/run.yaml",
     "  selector:\n    app.kubernetes.io/name: ymera\n    app.kubernetes.io/component: run\n  ports:",
     "  selector:\n    app.kubernetes.io/name: ymera\n    app.kubernetes.io/component: runner\n  ports:",
     "Service ymera-dev/ymera-run-metrics: spec.selector: selects no workload's pods"),
    ("an unknown ymera setting", "base/config/ymera.yaml",
     "log:\n  format: json\n", "log:\n  format: json\n  colour: false\n",
     "data.ymera.yaml: log.colour: unknown setting"),
    ("an override of a setting that does not exist", "overlays/dev/kustomization.yaml",
     "      - YMERA__LOG__LEVEL=debug\n", "      - YMERA__LOG__LEVEL=debug\n      - YMERA__LAKE__URI=s3://elsewhere\n",
     "data.YMERA__LAKE__URI: unknown setting: `lake.uri` is not a field of LakeSettings"),
    ("an invented metric in the dashboard", "grafana/ymera-dashboard.json",
     "ymera_dlq_events_total{", "ymera_dead_letters_total{",
     "metric ymera_dead_letters_total is not emitted anywhere in crates/"),
    ("a pipelines copy that drifted", "base/pipelines/metric_events.yaml",
     "name: metric_events\n", "name: metric_events\n# edited here only\n",
     "base/pipelines/metric_events.yaml: differs from pipelines/metric_events.yaml"),
    ("a Dockerfile whose run stage has a shell", "Dockerfile",
     "FROM gcr.io/distroless/cc-debian12:nonroot", "FROM debian:bookworm-slim",
     "the run stage must be distroless"),
    ("a Dockerfile running as root", "Dockerfile",
     "USER 65532:65532", "USER 0",
     "numeric non-root USER"),
    ("an image tag the Dockerfile does not build", "base/kustomization.yaml",
     '    newTag: "0.1.0"', '    newTag: "0.2.0"',
     "the tag must be the workspace version 0.1.0"),
    ("a kustomization that does not render", "overlays/prod/ymera/kustomization.yaml",
     "  - ../../../base\n", "  - ../../../base\n  - missing.yaml\n",
     "FAIL overlays/prod: kubectl kustomize failed"),
]


def run_case(repo, case):
    name, rel, find, replace, expect = case
    with tempfile.TemporaryDirectory(prefix="ymera-selftest.") as d:
        root = pathlib.Path(d) / "deploy"
        shutil.copytree(repo / "deploy", root)
        path = root / rel
        text = path.read_text()
        if text.count(find) < 1:
            return f"case {name!r}: its edit no longer applies to deploy/{rel} (update deploy/tools/selftest.py)"
        path.write_text(text.replace(find, replace, 1))
        proc = subprocess.run([str(repo / "scripts" / "validate-deploy"), str(root)], capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return f"case {name!r}: validate-deploy passed a broken copy:\n{out}"
        if not any(expect in line for line in out.splitlines() if line.startswith("FAIL")):
            return f"case {name!r}: no FAIL line with {expect!r}; got:\n{out}"
        return None


def main():
    repo = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2]).resolve()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(lambda c: run_case(repo, c), CASES) if p]
    for p in problems:
        print(f"FAIL self-test: {p}")
    if problems:
        return 1
    print(f"ok   self-test: {len(CASES)} deliberately broken copies of deploy/, each refused with the expected FAIL line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
