// Validates custom resources of other projects (a JSON array in argv[2]) against their
// published schemas, generated from those projects' CRDs by kubernetes-models:
// Prometheus Operator ServiceMonitors and Argo CD Applications.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { Application } from "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application";

const models = { "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor, "argoproj.io/v1alpha1/Application": Application };
let failed = 0;
for (const obj of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const Model = models[`${obj.apiVersion}/${obj.kind}`];
  try {
    if (!Model) throw new Error(`no schema for ${obj.apiVersion} ${obj.kind}`);
    new Model(obj).validate();
  } catch (e) {
    failed++;
    console.log(`${obj.kind} ${obj.metadata?.name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
