-- Argo CD health check for sidekey.dev/AuthPolicy (Lua 5.1, as run by Argo CD's gopher-lua).
--   Healthy      Ready=True, observed at the current generation
--   Progressing  not yet observed, an older generation, or RolloutPending (pods rolling out)
--   Degraded     Accepted=False (invalid, target not found, conflicted, reference not
--                permitted) or Ready=False for any other reason; the message says why
local hs = {}
local function condition(conditions, kind)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == kind then return c end
  end
  return nil
end
local function text(c)
  local reason = c.reason or ""
  if c.message ~= nil and c.message ~= "" then return reason .. ": " .. c.message end
  return reason
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "sidekey-controller is removing the sidecar and restoring the Services"
  return hs
end
local status = obj.status
local generation = (obj.metadata ~= nil and obj.metadata.generation) or 0
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for sidekey-controller to process the policy"
  return hs
end
local accepted = condition(status.conditions, "Accepted")
local ready = condition(status.conditions, "Ready")
local observed = status.observedGeneration or 0
if ready ~= nil and ready.observedGeneration ~= nil then observed = ready.observedGeneration end
if observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for sidekey-controller to observe generation " .. tostring(generation)
  return hs
end
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = text(accepted)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason ~= "RolloutPending" then
  hs.status = "Degraded"
  hs.message = text(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = text(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
