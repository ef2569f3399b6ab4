#!/bin/sh
# Deploy to Kubernetes: the migrate Job of the new image first, then the rollout.
#
#   ./k8s/deploy.sh [overlay]     # default: k8s/overlays/production
#
# `kubectl apply -k` alone is safe too (every pod waits in its wait-for-migrations init
# container until the schema is current), but a Job's pod template cannot change: the
# last deploy's Job has to go before the new one is applied, which is what this does.
set -eu
overlay=${1:-k8s/overlays/production}
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$overlay" >"$rendered"

migrate="app.kubernetes.io/name=migrate"
kubectl delete -f "$rendered" --selector="$migrate" --ignore-not-found --wait
kubectl apply -f "$rendered"
# Until the migrations are in, the new pods wait and the old ones keep serving.
kubectl wait -f "$rendered" --selector="$migrate" --for=condition=complete --timeout=30m
# Every Deployment (the objects with a component other than migrate).
kubectl rollout status -f "$rendered" --selector="app.kubernetes.io/component,app.kubernetes.io/component!=migrate" --timeout=30m
