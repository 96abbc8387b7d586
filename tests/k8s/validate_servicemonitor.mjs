// Validates ServiceMonitors (a JSON array in argv[2]) against the Prometheus Operator's
// published schema (@kubernetes-models/prometheus-operator, generated from its CRDs).
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

let failed = 0;
for (const obj of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  try {
    new ServiceMonitor(obj).validate();
  } catch (e) {
    failed++;
    console.log(`ServiceMonitor ${obj.metadata?.name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
