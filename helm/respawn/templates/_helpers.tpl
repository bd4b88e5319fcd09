{{/* Chart name, truncated to a DNS label. */}}
{{- define "respawn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every object this chart creates. */}}
{{- define "respawn.fullname" -}}
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

{{- define "respawn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "respawn.commonLabels" -}}
helm.sh/chart: {{ include "respawn.chart" . }}
app.kubernetes.io/name: {{ include "respawn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: respawn
{{- end }}

{{/* Labels on the controller's objects. */}}
{{- define "respawn.labels" -}}
{{ include "respawn.commonLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Labels that select the controller pods; never change them (Deployment selectors are immutable). */}}
{{- define "respawn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "respawn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "respawn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "respawn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller image: by digest when one is set (what runs is then exactly what was built). */}}
{{- define "respawn.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The controller's command line; mirrors `python -m controller --help`. */}}
{{- define "respawn.args" -}}
{{- with .Values.controller.watchNamespaces }}
- --namespace={{ join "," . }}
{{- end }}
- --workers={{ .Values.controller.workers }}
- --health-port={{ .Values.controller.healthPort }}
{{- if not .Values.metrics.auth.enabled }}
- --metrics-auth=false
{{- end }}
{{- if .Values.metrics.tls.secretName }}
- --tls-cert-file=/etc/respawn/tls/tls.crt
- --tls-key-file=/etc/respawn/tls/tls.key
{{- end }}
{{- if .Values.leaderElection.enabled }}
- --lease-name={{ .Values.leaderElection.leaseName }}
{{- else }}
- --no-leader-election
{{- end }}
{{- if .Values.sharedVolume.enabled }}
- --shared-root={{ .Values.sharedVolume.mountPath }}
{{- with .Values.sharedVolume.pollIntervalSeconds }}
- --checkpoint-poll-interval={{ . }}
{{- end }}
{{- end }}
{{- if not .Values.deviceFaults.enabled }}
- --no-device-faults
{{- end }}
- --log-level={{ .Values.controller.logLevel }}
{{- with .Values.controller.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
What the controller does to the objects it manages, in the namespaces it watches.
Each rule names the calls that need it (controller/app.py informers, controller/kube.py).
*/}}
{{- define "respawn.jobRules" -}}
# Informer (list+watch) on TrainingJobs. Reads come from its cache: no get. KubeWriter.delete_job:
# a finished job past its ttlSecondsAfterFinished.
- apiGroups: [training.respawn.dev]
  resources: [trainingjobs]
  verbs: [list, watch, delete]
# KubeWriter.write_status: replace on the status subresource, guarded by resourceVersion.
- apiGroups: [training.respawn.dev]
  resources: [trainingjobs/status]
  verbs: [update]
# Worker pods carry an ownerReference with blockOwnerDeletion: true; where the
# OwnerReferencesPermissionEnforcement admission plugin is on, that needs update on finalizers.
- apiGroups: [training.respawn.dev]
  resources: [trainingjobs/finalizers]
  verbs: [update]
# Informer on managed pods; KubeWriter.create_pod / delete_pod; get only after a create
# answered 409, to tell the job's own pod from a foreign one holding its name. patch is never
# called: RBAC lets the controller grant the workers' report Role (patch on the attempt's own
# pods) only if it holds that permission itself.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, get, delete, patch]
# KubeWriter.ensure_owned: the ServiceAccount the workers run as and report with (one per job,
# owned by it); get after a 409, as for pods.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, get]
# KubeWriter.ensure_owned: the report Role (patch on the current attempt's pods, updated at each
# attempt) and its RoleBinding to the workers' ServiceAccount.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [create, get, update]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create, get]
# KubeWriter.ensure_owned: the job's PodGroup for gang scheduling (spec.podGroup, core/gang.py),
# Volcano's or the coscheduling plugin's; get after a 409, update when the gang's size changes.
- apiGroups: [scheduling.volcano.sh, scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [create, get, update]
# KubeWriter.ensure_service: the job's headless Service; get after a 409, as for pods.
- apiGroups: [""]
  resources: [services]
  verbs: [create, get]
# KubeWriter.emit_event: core/v1 Events, created with generateName.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The controller's ServiceAccount as the subject of a binding. */}}
{{- define "respawn.subjects" -}}
- kind: ServiceAccount
  name: {{ include "respawn.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
