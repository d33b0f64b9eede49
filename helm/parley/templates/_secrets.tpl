{{/*
The three secrets: the JWT signing key, the database URLs and the Redis URL.
Each is made by the chart from values unless an existingSecret is named.

Generated values (the JWT key, the bundled Postgres password) are made once:
on upgrades `lookup` reads them back from the Secret in the cluster. Tools
that render without a cluster (helm template, Argo CD) cannot look up and
make new ones on every render; give jwt.privateKey or jwt.existingSecret
there (the bundled Postgres is for trying Parley out only).
*/}}

{{/* ---- JWT signing key ---- */}}

{{- define "parley.jwt.secretName" -}}
{{- if .Values.jwt.existingSecret }}
{{- .Values.jwt.existingSecret }}
{{- else }}
{{- printf "%s-jwt" (include "parley.fullname" .) }}
{{- end }}
{{- end }}

{{/* Key of the PEM in the Secret; also the file name under /etc/parley/jwt. */}}
{{- define "parley.jwt.key" -}}
{{- if .Values.jwt.existingSecret }}
{{- .Values.jwt.existingSecretKey }}
{{- else }}
{{- "jwt-ed25519.pem" }}
{{- end }}
{{- end }}

{{/* The chart-made Secret's data, as YAML (keys to plain values). */}}
{{- define "parley.jwt.data" -}}
{{- $pem := .Values.jwt.privateKey }}
{{- if not $pem }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "parley.jwt.secretName" .) }}
{{- $stored := dig "data" "jwt-ed25519.pem" "" ($existing | default dict) }}
{{- if $stored }}
{{- $pem = b64dec $stored }}
{{- else }}
{{- $pem = genPrivateKey "ed25519" }}
{{- end }}
{{- end }}
{{- toYaml (dict "jwt-ed25519.pem" $pem) }}
{{- end }}

{{- define "parley.jwt.checksumSource" -}}
{{- if .Values.jwt.existingSecret }}
{{- printf "existing %s %s" .Values.jwt.existingSecret .Values.jwt.existingSecretKey }}
{{- else }}
{{- include "parley.jwt.data" . }}
{{- end }}
{{- end }}

{{/* ---- Secrets between the services ---- */}}

{{- define "parley.internal.secretName" -}}
{{- default (printf "%s-internal" (include "parley.fullname" .)) .Values.internalSecrets.existingSecret }}
{{- end }}

{{/* Key of one of them: (dict "root" $ "which" "gatewayStream" | "bus"). */}}
{{- define "parley.internal.key" -}}
{{- $v := .root.Values.internalSecrets }}
{{- if $v.existingSecret }}{{ ternary $v.gatewayStreamKey $v.busKey (eq .which "gatewayStream") }}{{ else }}{{ ternary "gateway-stream-secret" "chat-bus-secret" (eq .which "gatewayStream") }}{{ end }}
{{- end }}

{{/* The chart-made Secret's data: random secrets, kept across upgrades. */}}
{{- define "parley.internal.data" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "parley.internal.secretName" .) }}
{{- $data := dict }}
{{- range $key := list "gateway-stream-secret" "chat-bus-secret" }}
{{- $stored := dig "data" $key "" ($existing | default dict) }}
{{- $_ := set $data $key (ternary (b64dec $stored) (randAlphaNum 48) (ne $stored "")) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/* ---- Database URLs ---- */}}

{{/* "true" when the chart makes the database Secret. */}}
{{- define "parley.database.chartManaged" -}}
{{- if or .Values.postgresql.enabled (not .Values.externalDatabase.existingSecret) }}true{{ end }}
{{- end }}

{{- define "parley.database.secretName" -}}
{{- if include "parley.database.chartManaged" . }}
{{- printf "%s-database" (include "parley.fullname" .) }}
{{- else }}
{{- .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}

{{/* Key of a service's URL. Argument: (dict "root" $ "name" "chat"). */}}
{{- define "parley.database.key" -}}
{{- if include "parley.database.chartManaged" .root }}
{{- printf "%s-database-url" .name }}
{{- else }}
{{- index .root.Values.externalDatabase.existingSecretKeys .name }}
{{- end }}
{{- end }}

{{/*
The chart-made Secret's data, as YAML. With the bundled Postgres it also
holds the password Postgres is initialised with, generated once and read
back on upgrades, so both always agree.
*/}}
{{- define "parley.database.data" -}}
{{- $data := dict }}
{{- if .Values.postgresql.enabled }}
{{- $password := .Values.postgresql.auth.password }}
{{- if not $password }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "parley.database.secretName" .) }}
{{- $stored := dig "data" "postgres-password" "" ($existing | default dict) }}
{{- if $stored }}
{{- $password = b64dec $stored }}
{{- else }}
{{- $password = randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- $_ := set $data "postgres-password" $password }}
{{- $auth := .Values.postgresql.auth }}
{{- $url := printf "postgres://%s:%s@%s:5432/%s" ($auth.username | urlquery) ($password | urlquery | replace "+" "%20") (include "parley.componentName" (dict "root" . "name" "postgresql")) $auth.database }}
{{- range $name := splitList " " (include "parley.databaseServices" .) }}
{{- $_ := set $data (printf "%s-database-url" $name) $url }}
{{- end }}
{{- else }}
{{- $external := .Values.externalDatabase }}
{{- range $name := splitList " " (include "parley.databaseServices" .) }}
{{- $_ := set $data (printf "%s-database-url" $name) (default $external.url (index $external.urls $name)) }}
{{- end }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{- define "parley.database.checksumSource" -}}
{{- if include "parley.database.chartManaged" . }}
{{- include "parley.database.data" . }}
{{- else }}
{{- $keys := .Values.externalDatabase.existingSecretKeys }}
{{- printf "existing %s %s %s %s %s" .Values.externalDatabase.existingSecret $keys.auth $keys.user $keys.chat $keys.media }}
{{- end }}
{{- end }}

{{/* ---- Redis URL ---- */}}

{{- define "parley.redis.chartManaged" -}}
{{- if or .Values.redis.enabled (not .Values.externalRedis.existingSecret) }}true{{ end }}
{{- end }}

{{- define "parley.redis.secretName" -}}
{{- if include "parley.redis.chartManaged" . }}
{{- printf "%s-redis" (include "parley.fullname" .) }}
{{- else }}
{{- .Values.externalRedis.existingSecret }}
{{- end }}
{{- end }}

{{- define "parley.redis.key" -}}
{{- if include "parley.redis.chartManaged" . }}
{{- "redis-url" }}
{{- else }}
{{- .Values.externalRedis.existingSecretKey }}
{{- end }}
{{- end }}

{{/* The bundled Redis gets a random password, kept across upgrades, in
the URL chat reads and in the key the Redis pod reads. */}}
{{- define "parley.redis.data" -}}
{{- $data := dict "redis-url" .Values.externalRedis.url }}
{{- if .Values.redis.enabled }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "parley.redis.secretName" .) }}
{{- $stored := dig "data" "redis-password" "" ($existing | default dict) }}
{{- $password := ternary (b64dec $stored) (randAlphaNum 32) (ne $stored "") }}
{{- $_ := set $data "redis-password" $password }}
{{- $_ := set $data "redis-url" (printf "redis://:%s@%s:6379" $password (include "parley.componentName" (dict "root" . "name" "redis"))) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{- define "parley.redis.checksumSource" -}}
{{- if include "parley.redis.chartManaged" . }}
{{- include "parley.redis.data" . }}
{{- else }}
{{- printf "existing %s %s" .Values.externalRedis.existingSecret .Values.externalRedis.existingSecretKey }}
{{- end }}
{{- end }}
