{{- define "streamdl.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamdl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamdl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamdl.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "streamdl.fullname" .)) -}}
{{- end -}}

{{/* The container's image, environment and mounts, shared by every pod; args: dict "root" . "env" (dict NAME value) */}}
{{- define "streamdl.container" -}}
{{- $root := .root -}}
image: {{ printf "%s:%s" $root.Values.image.repository $root.Values.image.tag | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "streamdl.fullname" $root }}-settings
{{- if or $root.Values.secrets.files .env }}
env:
  {{- range $var, $key := $root.Values.secrets.files }}
  - name: {{ $var }}
    value: {{ printf "/var/run/secrets/streamdl/%s" $key | quote }}
  {{- end }}
  {{- range $var, $value := .env }}
  - name: {{ $var }}
    value: {{ $value | quote }}
  {{- end }}
{{- end }}
volumeMounts:
  - name: state
    mountPath: /var/lib/streamdl
  {{- if $root.Values.secrets.files }}
  - name: secrets
    mountPath: /var/run/secrets/streamdl
    readOnly: true
  {{- end }}
securityContext:
  allowPrivilegeEscalation: false
{{- end -}}

{{- define "streamdl.volumes" -}}
volumes:
  - name: state
    {{- if .Values.persistence.enabled }}
    persistentVolumeClaim:
      claimName: {{ include "streamdl.fullname" . }}-state
    {{- else }}
    emptyDir: {}
    {{- end }}
  {{- if .Values.secrets.files }}
  - name: secrets
    secret:
      secretName: {{ include "streamdl.secretName" . }}
      defaultMode: 0400
      items:
        {{- range $var, $key := .Values.secrets.files }}
        - key: {{ $key }}
          path: {{ $key }}
        {{- end }}
  {{- end }}
{{- end -}}

{{/* resources plus the optional nvidia.com/gpu request; args: dict "resources" r "gpu" n */}}
{{- define "streamdl.resources" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpu) 0 -}}
{{- $limits := merge (dict "nvidia.com/gpu" (int .gpu)) ($res.limits | default dict) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
resources:
{{- toYaml $res | nindent 2 }}
{{- end -}}

{{- define "streamdl.podSecurity" -}}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
