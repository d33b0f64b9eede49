{{/*
Names, labels and images, then the one workload template every service
renders through ("parley.component").

Calling convention for the per-service helpers: a dict with
  root: the top-level context ($)
  name: the service key in .Values.services (auth, user, chat, media, gateway)
*/}}

{{/* The five services, in the order objects are rendered. */}}
{{- define "parley.serviceNames" -}}
auth user chat media gateway
{{- end }}

{{/* The services that keep a database. */}}
{{- define "parley.databaseServices" -}}
auth user chat media
{{- end }}

{{/* Chart name, overridable. */}}
{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: the release name, plus the chart name unless
the release name already contains it (release "parley" -> "parley-chat").
*/}}
{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of an object that belongs to one component: (dict "root" $ "name" "chat" "suffix" "headless"). */}}
{{- define "parley.componentName" -}}
{{- $parts := list (include "parley.fullname" .root) .name }}
{{- with .suffix }}{{ $parts = append $parts . }}{{ end }}
{{- join "-" $parts | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "parley.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: name + instance (+ component). Selectors are immutable, so
they never carry the version or the chart.
Argument: (dict "root" $ "component" "chat"); component may be empty.
*/}}
{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Every object's labels. Argument as for parley.selectorLabels. */}}
{{- define "parley.labels" -}}
helm.sh/chart: {{ include "parley.chart" .root }}
{{ include "parley.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: parley
{{- end }}

{{/*
A third-party image reference: (dict "root" $ "image" .Values.redis.image).
registry/repository:tag, or @digest when a digest is given.
*/}}
{{- define "parley.thirdPartyImage" -}}
{{- $registry := default .image.registry .root.Values.global.imageRegistry }}
{{- $path := .image.repository }}
{{- if $registry }}{{ $path = printf "%s/%s" $registry $path }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $path .image.digest }}
{{- else }}
{{- printf "%s:%s" $path (toString .image.tag) }}
{{- end }}
{{- end }}

{{/* A service's image: <registry>/<repository>/<name>:<tag> (or @digest). Argument: (dict "root" $ "name" "chat"). */}}
{{- define "parley.serviceImage" -}}
{{- $values := .root.Values }}
{{- $own := (index $values.services .name).image }}
{{- $registry := default $values.image.registry $values.global.imageRegistry }}
{{- $parts := list }}
{{- with $registry }}{{ $parts = append $parts . }}{{ end }}
{{- with $values.image.repository }}{{ $parts = append $parts . }}{{ end }}
{{- $parts = append $parts $own.name }}
{{- $path := join "/" $parts }}
{{- if $own.digest }}
{{- printf "%s@%s" $path $own.digest }}
{{- else }}
{{- printf "%s:%s" $path (toString (default (default .root.Chart.AppVersion $values.image.tag) $own.tag)) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets block, from global.imagePullSecrets. Argument: $. */}}
{{- define "parley.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A service's effective settings: .Values.defaults deep-merged with
.Values.services.<name> (maps merged, scalars and lists replaced), as YAML;
read it back with fromYaml. Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.settings" -}}
{{- $values := .root.Values }}
{{- toYaml (mergeOverwrite (deepCopy $values.defaults) (deepCopy (index $values.services .name))) }}
{{- end }}

{{/*
A value as an environment variable's text. Numbers from values files arrive
as float64 and would print as 1.048576e+06; whole numbers print as integers.
*/}}
{{- define "parley.string" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- printf "%d" (int64 .) }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* The gRPC readiness service name of a service; empty for the gateway. */}}
{{- define "parley.grpcHealthService" -}}
{{- get (dict "auth" "parley.auth.v1.AuthService" "user" "parley.user.v1.UserService" "chat" "parley.chat.v1.ChatService" "media" "parley.media.v1.MediaService") . }}
{{- end }}

{{/* The variable prefix of a service: AUTH, USER, CHAT, GATEWAY. */}}
{{- define "parley.envPrefix" -}}
{{- upper . }}
{{- end }}

{{/* The API port's name: grpc, or http for the gateway. */}}
{{- define "parley.apiPortName" -}}
{{- if eq . "gateway" }}http{{ else }}grpc{{ end }}
{{- end }}

{{/* ServiceAccount name of a service. Argument: (dict "root" $ "name" "chat"). */}}
{{- define "parley.serviceAccountName" -}}
{{- $s := include "parley.settings" . | fromYaml }}
{{- if $s.serviceAccount.create }}
{{- default (include "parley.componentName" .) $s.serviceAccount.name }}
{{- else }}
{{- default "default" $s.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Where callers find a gRPC service: its headless Service, so every caller
resolves all ready pods (re-resolved every 10 s) and balances calls and
streams across them instead of pinning one pod behind a ClusterIP.
Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.serviceUrl" -}}
{{- $port := (index .root.Values.services .name).ports.grpc }}
{{- $scheme := ternary "https" "http" .root.Values.tls.enabled }}
{{- printf "%s://%s:%v" $scheme (include "parley.componentName" (dict "root" .root "name" .name "suffix" "headless")) $port }}
{{- end }}

{{/*
The Secret holding a service's certificate (tls.crt, tls.key, ca.crt): the
one cert-manager writes, or tls.existingSecrets.<name>.
Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.tls.secretName" -}}
{{- default (include "parley.componentName" (dict "root" .root "name" .name "suffix" "tls")) (index .root.Values.tls.existingSecrets .name) }}
{{- end }}

{{/*
The non-secret variables of a service, as a flat YAML map (the ConfigMap's
data). Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.env" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $values := $root.Values }}
{{- $s := include "parley.settings" . | fromYaml }}
{{- $prefix := include "parley.envPrefix" $name }}
{{- $env := dict }}
{{- if eq $name "gateway" }}
{{- $_ := set $env "GATEWAY_HTTP_ADDR" (printf "0.0.0.0:%v" $s.ports.http) }}
{{- else }}
{{- $_ := set $env (printf "%s_GRPC_ADDR" $prefix) (printf "0.0.0.0:%v" $s.ports.grpc) }}
{{- end }}
{{- $_ := set $env (printf "%s_ADMIN_ADDR" $prefix) (printf "0.0.0.0:%v" $s.ports.admin) }}
{{- range $key, $value := $s.config }}
{{- $_ := set $env (printf "%s_%s" $prefix (snakecase $key | upper)) (include "parley.string" $value) }}
{{- end }}
{{- if eq $name "auth" }}
{{- $_ := set $env "AUTH_JWT_PRIVATE_KEY_FILE" (printf "/etc/parley/jwt/%s" (include "parley.jwt.key" $root)) }}
{{- end }}
{{- if has $name (list "user" "chat" "media" "gateway") }}
{{- $_ := set $env "AUTH_URL" (include "parley.serviceUrl" (dict "root" $root "name" "auth")) }}
{{- end }}
{{- if has $name (list "chat" "gateway") }}
{{- $_ := set $env "MEDIA_URL" (include "parley.serviceUrl" (dict "root" $root "name" "media")) }}
{{- end }}
{{- if eq $name "media" }}
{{- $store := $s.storage }}
{{- if eq $store.type "s3" }}
{{- $_ := set $env "MEDIA_STORE_URL" (printf "s3://%s%s" $store.s3.bucket (ternary (printf "/%s" (trimPrefix "/" $store.s3.prefix)) "" (ne $store.s3.prefix ""))) }}
{{- $_ := set $env "MEDIA_S3_REGION" $store.s3.region }}
{{- with $store.s3.endpoint }}
{{- $_ := set $env "MEDIA_S3_ENDPOINT" . }}
{{- end }}
{{- else }}
{{- $_ := set $env "MEDIA_STORE_URL" "file:///var/lib/parley/media" }}
{{- end }}
{{- end }}
{{- if has $name (list "auth" "gateway") }}
{{- $_ := set $env "USER_URL" (include "parley.serviceUrl" (dict "root" $root "name" "user")) }}
{{- end }}
{{- if eq $name "gateway" }}
{{- $_ := set $env "CHAT_URL" (include "parley.serviceUrl" (dict "root" $root "name" "chat")) }}
{{- end }}
{{- if $values.tls.enabled }}
{{- $_ := set $env (printf "%s_TLS_CERT_FILE" $prefix) "/etc/parley/tls/tls.crt" }}
{{- $_ := set $env (printf "%s_TLS_KEY_FILE" $prefix) "/etc/parley/tls/tls.key" }}
{{- $_ := set $env (printf "%s_TLS_CA_FILE" $prefix) "/etc/parley/tls/ca.crt" }}
{{- if and $values.tls.mutual (ne $name "gateway") }}
{{- $_ := set $env (printf "%s_TLS_CLIENT_CA_FILE" $prefix) "/etc/parley/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- $_ := set $env "SHUTDOWN_GRACE" (printf "%ss" (include "parley.string" $s.shutdownGraceSeconds)) }}
{{- if gt (int64 $s.workerThreads) 0 }}
{{- $_ := set $env "TOKIO_WORKER_THREADS" (include "parley.string" $s.workerThreads) }}
{{- end }}
{{- $_ := set $env "RUST_LOG" $values.logging.level }}
{{- $_ := set $env "LOG_FORMAT" $values.logging.format }}
{{- if $values.observability.otlp.enabled }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $values.observability.otlp.endpoint }}
{{- end }}
{{- range $key, $value := $s.extraEnv }}
{{- $_ := set $env $key (include "parley.string" $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
Environment variables read from Secrets, as a container `env` list.
Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.secretEnv" -}}
{{- $root := .root }}
{{- if has .name (splitList " " (include "parley.databaseServices" $root)) }}
- name: {{ printf "%s_DATABASE_URL" (include "parley.envPrefix" .name) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "parley.database.secretName" $root }}
      key: {{ include "parley.database.key" (dict "root" $root "name" .name) }}
{{- end }}
{{- if has .name (list "chat" "gateway") }}
- name: GATEWAY_STREAM_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "parley.internal.secretName" $root }}
      key: {{ include "parley.internal.key" (dict "root" $root "which" "gatewayStream") }}
{{- end }}
{{- if eq .name "chat" }}
- name: CHAT_BUS_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "parley.internal.secretName" $root }}
      key: {{ include "parley.internal.key" (dict "root" $root "which" "bus") }}
{{- end }}
{{- if eq .name "chat" }}
- name: CHAT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "parley.redis.secretName" $root }}
      key: {{ include "parley.redis.key" $root }}
{{- end }}
{{- if eq .name "media" }}
{{- $s3 := (include "parley.settings" . | fromYaml).storage }}
{{- if and (eq $s3.type "s3") $s3.s3.existingSecret }}
- name: MEDIA_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.s3.existingSecret }}
      key: {{ $s3.s3.accessKeyIdKey }}
- name: MEDIA_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.s3.existingSecret }}
      key: {{ $s3.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A digest of the Secrets a service reads, for the checksum/secret annotation:
a change of a chart-made Secret rolls the pods. For an existingSecret only
its name and keys are known here; roll the pods yourself after rotating it
(kubectl rollout restart).
*/}}
{{- define "parley.secretChecksum" -}}
{{- $root := .root }}
{{- $parts := list }}
{{- if eq .name "auth" }}
{{- $parts = append $parts (include "parley.jwt.checksumSource" $root) }}
{{- end }}
{{- if has .name (splitList " " (include "parley.databaseServices" $root)) }}
{{- $parts = append $parts (include "parley.database.checksumSource" $root) }}
{{- end }}
{{- if eq .name "media" }}
{{- $parts = append $parts (toYaml (include "parley.settings" . | fromYaml).storage) }}
{{- end }}
{{- if eq .name "chat" }}
{{- $parts = append $parts (include "parley.redis.checksumSource" $root) }}
{{- end }}
{{- if has .name (list "chat" "gateway") }}
{{- if $root.Values.internalSecrets.existingSecret }}
{{- $parts = append $parts (printf "existing %s" (toYaml $root.Values.internalSecrets)) }}
{{- else }}
{{- $parts = append $parts (include "parley.internal.data" $root) }}
{{- end }}
{{- end }}
{{- join "\n" $parts | sha256sum }}
{{- end }}

{{/*
The workload of one service: ServiceAccount, ConfigMap, Deployment and its
Services. Argument: (dict "root" $ "name" "chat").
*/}}
{{- define "parley.component" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $ctx := dict "root" $root "name" $name }}
{{- $labelCtx := dict "root" $root "component" $name }}
{{- $s := include "parley.settings" $ctx | fromYaml }}
{{- $fullname := include "parley.componentName" $ctx }}
{{- $apiPort := include "parley.apiPortName" $name }}
{{- $healthService := include "parley.grpcHealthService" $name }}
{{- if $s.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "parley.serviceAccountName" $ctx }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
  {{- with $s.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ $s.serviceAccount.automountToken }}
{{- end }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
data:
  {{- include "parley.env" $ctx | nindent 2 }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
spec:
  {{- if not $s.autoscaling.enabled }}
  replicas: {{ $s.replicaCount }}
  {{- end }}
  minReadySeconds: {{ $s.minReadySeconds }}
  strategy:
    {{- if and (eq $name "media") (eq $s.storage.type "file") (eq $s.storage.file.accessMode "ReadWriteOnce") }}
    # One volume that only one node mounts: the old pod goes before the new
    # one comes.
    type: Recreate
    {{- else }}
    {{- toYaml $s.strategy | nindent 4 }}
    {{- end }}
  selector:
    matchLabels:
      {{- include "parley.selectorLabels" $labelCtx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "parley.labels" $labelCtx | nindent 8 }}
        {{- with $s.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "parley.env" $ctx | sha256sum }}
        checksum/secret: {{ include "parley.secretChecksum" $ctx }}
        {{- if $root.Values.observability.scrapeAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $s.ports.admin | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $s.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "parley.serviceAccountName" $ctx }}
      automountServiceAccountToken: {{ $s.serviceAccount.automountToken }}
      # The services read only their own variables; no Service link variables.
      enableServiceLinks: false
      {{- with include "parley.imagePullSecrets" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      {{- with $s.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      # preStop sleep + SHUTDOWN_GRACE + 5 s fit in it (checked by the chart).
      terminationGracePeriodSeconds: {{ $s.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $s.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "parley.serviceImage" $ctx }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          envFrom:
            - configMapRef:
                name: {{ $fullname }}
          {{- with include "parley.secretEnv" $ctx | trim }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          ports:
            - name: {{ $apiPort }}
              containerPort: {{ index $s.ports $apiPort }}
              protocol: TCP
            - name: admin
              containerPort: {{ $s.ports.admin }}
              protocol: TCP
          {{- if and $healthService (not $root.Values.tls.enabled) }}
          # gRPC probes take port numbers, not names. Health service "" is
          # liveness (never depends on the database); the service's own name
          # is readiness (database reachable and migrated, auth's keys held,
          # not draining).
          startupProbe:
            grpc:
              port: {{ $s.ports.grpc }}
              service: ""
            {{- toYaml $s.startupProbe | nindent 12 }}
          livenessProbe:
            grpc:
              port: {{ $s.ports.grpc }}
              service: ""
            {{- toYaml $s.livenessProbe | nindent 12 }}
          readinessProbe:
            grpc:
              port: {{ $s.ports.grpc }}
              service: {{ $healthService }}
            {{- toYaml $s.readinessProbe | nindent 12 }}
          {{- else }}
          # /healthz never depends on another process; /readyz is 503 while
          # not ready (the service's readiness conditions; for the gateway:
          # no chat replica reachable, no keys of auth) and while draining.
          # Also the probes of the gRPC services under TLS, which Kubernetes'
          # gRPC probes cannot speak.
          startupProbe:
            httpGet:
              path: /healthz
              port: admin
            {{- toYaml $s.startupProbe | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            {{- toYaml $s.livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: admin
            {{- toYaml $s.readinessProbe | nindent 12 }}
          {{- end }}
          {{- if and (gt (int $s.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" $root.Capabilities.KubeVersion.Version) }}
          # Keep serving while endpoints and load balancers drop the pod;
          # SIGTERM (and the service's own drain) follows. A native sleep:
          # the distroless images have no shell for an exec sleep.
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $s.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- toYaml $s.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if eq $name "auth" }}
            - name: jwt
              mountPath: /etc/parley/jwt
              readOnly: true
            {{- end }}
            {{- if and (eq $name "media") (eq $s.storage.type "file") }}
            - name: media
              mountPath: /var/lib/parley/media
            {{- end }}
            {{- if $root.Values.tls.enabled }}
            # A whole-Secret mount (no subPath), so a renewed certificate
            # appears in place and is picked up without a restart.
            - name: tls
              mountPath: /etc/parley/tls
              readOnly: true
            {{- end }}
      volumes:
        # The root filesystem is read-only. /tmp holds media's images while
        # their thumbnails are made (tmpSizeLimit); the other services
        # write nothing there.
        - name: tmp
          emptyDir:
            sizeLimit: {{ $s.tmpSizeLimit }}
        {{- if and (eq $name "media") (eq $s.storage.type "file") }}
        - name: media
          persistentVolumeClaim:
            claimName: {{ default (include "parley.componentName" (dict "root" $root "name" "media" "suffix" "files")) $s.storage.file.existingClaim }}
        {{- end }}
        {{- if $root.Values.tls.enabled }}
        - name: tls
          secret:
            secretName: {{ include "parley.tls.secretName" $ctx }}
            defaultMode: 0440
        {{- end }}
        {{- if eq $name "auth" }}
        - name: jwt
          secret:
            secretName: {{ include "parley.jwt.secretName" $root }}
            defaultMode: 0440
            items:
              - key: {{ include "parley.jwt.key" $root }}
                path: {{ include "parley.jwt.key" $root }}
        {{- end }}
      {{- if $s.topologySpread.enabled }}
      topologySpreadConstraints:
        {{- range $s.topologySpread.topologyKeys }}
        - topologyKey: {{ . }}
          maxSkew: {{ $s.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $s.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "parley.selectorLabels" $labelCtx | nindent 14 }}
          # Count only pods of the same rollout revision, so a rollout
          # spreads its new pods instead of balancing against old ones.
          matchLabelKeys:
            - pod-template-hash
        {{- end }}
      {{- end }}
      {{- with $s.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if eq $name "gateway" }}
---
# The gateway's public Service: HTTP, WebSocket and the web client.
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
  {{- with $s.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $s.service.type }}
  selector:
    {{- include "parley.selectorLabels" $labelCtx | nindent 4 }}
  ports:
    - name: http
      port: {{ $s.ports.http }}
      targetPort: http
      protocol: TCP
      appProtocol: {{ ternary "https" "http" $root.Values.tls.enabled }}
---
# The gateway's admin port, kept off the public Service.
apiVersion: v1
kind: Service
metadata:
  name: {{ include "parley.componentName" (dict "root" $root "name" $name "suffix" "admin") }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "parley.selectorLabels" $labelCtx | nindent 4 }}
  ports:
    - name: admin
      port: {{ $s.ports.admin }}
      targetPort: admin
      protocol: TCP
      appProtocol: http
{{- else }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
  {{- with $s.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: ClusterIP
  selector:
    {{- include "parley.selectorLabels" $labelCtx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $s.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: admin
      port: {{ $s.ports.admin }}
      targetPort: admin
      protocol: TCP
      appProtocol: http
---
# Headless: its DNS name resolves to every ready pod, which callers balance
# over (the gateway keeps streams to each chat replica).
apiVersion: v1
kind: Service
metadata:
  name: {{ include "parley.componentName" (dict "root" $root "name" $name "suffix" "headless") }}
  labels:
    {{- include "parley.labels" $labelCtx | nindent 4 }}
  {{- with $s.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "parley.selectorLabels" $labelCtx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $s.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}
{{- end }}

{{/*
A NetworkPolicy peer list item: this release's pods of the given components,
in the release namespace. Argument: (dict "root" $ "components" (list ...)).
*/}}
{{- define "parley.networkPolicy.pods" -}}
- podSelector:
    matchLabels:
      {{- include "parley.selectorLabels" (dict "root" .root) | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [{{ join ", " .components }}]
{{- end }}
