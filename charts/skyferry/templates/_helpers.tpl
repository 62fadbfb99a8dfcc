{{/* Chart name. */}}
{{- define "skyferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object (release name, or fullnameOverride). */}}
{{- define "skyferry.fullname" -}}
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

{{- define "skyferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "skyferry.labels" -}}
helm.sh/chart: {{ include "skyferry.chart" . }}
{{ include "skyferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels (add app.kubernetes.io/component per workload). */}}
{{- define "skyferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skyferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "skyferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skyferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding store-url, broker-url, api-token (and postgres-password, nats-password). */}}
{{- define "skyferry.secretName" -}}
{{- default (printf "%s-credentials" (include "skyferry.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; a digest wins over the tag. */}}
{{- define "skyferry.imageRef" -}}
{{- $img := index . 0 }}{{- $default := index . 1 }}
{{- if $img.digest }}{{ printf "%s@%s" $img.repository $img.digest }}{{- else }}{{ printf "%s:%s" $img.repository (default $default $img.tag) }}{{- end }}
{{- end }}

{{- define "skyferry.image" -}}
{{ include "skyferry.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* Environment of every app container: the URLs, from the Secret (the api adds its token). */}}
{{- define "skyferry.env" -}}
- name: SKYFERRY_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "skyferry.secretName" . }}
      key: store-url
- name: SKYFERRY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "skyferry.secretName" . }}
      key: broker-url
{{- end }}

{{/*
Volumes of an app pod: /tmp (the root filesystem is read-only) and, with archive true, the
archive. Only the worker mounts the archive: it is where an operator's `skyferry export` runs
write (in the worker pod, docs/onprem.md); the API and the migration Job never touch it, so a
ReadWriteOnce volume is never needed on two nodes at once.
Arguments (a dict): root (the chart's context) and archive (bool).
*/}}
{{- define "skyferry.volumes" -}}
{{- $root := .root -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .archive }}
- name: archive
{{- if $root.Values.archive.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "skyferry.fullname" $root }}-archive
{{- else }}
  emptyDir:
    sizeLimit: 1Gi
{{- end }}
{{- end }}
{{- end }}

{{- define "skyferry.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .archive }}
- name: archive
  mountPath: /var/lib/skyferry/archive
{{- end }}
{{- end }}

{{/*
Whether the archive volume can be attached to one node only (a PersistentVolumeClaim without
ReadWriteMany): then one worker pod at a time may mount it.
*/}}
{{- define "skyferry.archiveSingleAttach" -}}
{{- $p := .Values.archive.persistence -}}
{{- if and $p.enabled (not (has "ReadWriteMany" $p.accessModes)) }}true{{ end -}}
{{- end }}

{{/* checkov skips shared by the app workloads, each with its reason. */}}
{{- define "skyferry.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_35=The app reads its settings from SKYFERRY_* environment variables (pydantic-settings); the Secret is referenced, never inlined.
{{- end }}

{{/*
The pod template of every app workload (api, worker, migration), so that they cannot drift:
labels and annotations (podLabels, podAnnotations, the config checksum), imagePullSecrets,
the ServiceAccount, both security contexts, the image, the ConfigMap, /tmp (and the archive
where asked).
Arguments (a dict): root (the chart's context), component (label), name (container name),
container (YAML of the workload's own container fields: args/command, env, ports, probes,
resources) and optionally restartPolicy and archive (true: mount the archive volume).
*/}}
{{- define "skyferry.podTemplate" -}}
{{- $root := .root -}}
metadata:
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "skyferry.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "skyferry.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automount }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .name }}
      image: {{ include "skyferry.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "skyferry.fullname" $root }}
      {{- .container | nindent 6 }}
      volumeMounts:
        {{- include "skyferry.volumeMounts" (dict "archive" .archive) | nindent 8 }}
  volumes:
    {{- include "skyferry.volumes" (dict "root" $root "archive" .archive) | nindent 4 }}
{{- end }}
