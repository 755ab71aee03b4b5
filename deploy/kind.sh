#!/usr/bin/env bash
# A newcomer's path: a kind cluster running Knative Serving with kxds as its ingress.
# Needs docker, kind and kubectl. Cannot run in kxds's CI (no Docker engine there); every step is
# an ordinary command, so it can also be followed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kxds}
KNATIVE_VERSION=${KNATIVE_VERSION:-knative-v1.20.0}
SERVING=https://github.com/knative/serving/releases/download/${KNATIVE_VERSION}

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "kind.sh: $tool is required" >&2; exit 1; }
done

echo "1. kind cluster '$CLUSTER'"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"

echo "2. Knative Serving $KNATIVE_VERSION"
kubectl apply -f "$SERVING/serving-crds.yaml"
kubectl wait --for=condition=Established --timeout=120s crd/ingresses.networking.internal.knative.dev
kubectl apply -f "$SERVING/serving-core.yaml"
kubectl -n knative-serving rollout status deployment/controller --timeout=300s

echo "3. kxds image, loaded into the cluster"
docker build -t kxds:dev .
kind load docker-image kxds:dev --name "$CLUSTER"

echo "4. kxds and the Envoy gateways"
kubectl apply -k deploy/
kubectl -n knative-serving rollout status deployment/net-kourier-controller --timeout=300s
kubectl -n kourier-system rollout status deployment/3scale-kourier-gateway --timeout=300s

echo "5. Knative uses the Kourier ingress class, served by kxds"
kubectl patch configmap/config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
kubectl patch configmap/config-domain -n knative-serving --type merge -p '{"data":{"example.com":""}}'

echo "6. A hello Knative Service"
kubectl apply -f - <<'YAML'
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          env:
            - {name: TARGET, value: kxds}
YAML
kubectl wait ksvc/hello --for=condition=Ready --timeout=300s
kubectl get kingress hello -o jsonpath='{.status.conditions}'; echo

echo "7. curl it through the gateway"
kubectl -n kourier-system port-forward service/kourier 8080:80 >/dev/null 2>&1 &
forward=$!
trap 'kill $forward' EXIT
sleep 3
curl -s -H 'Host: hello.default.example.com' http://127.0.0.1:8080/
