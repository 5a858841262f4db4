-- wrk script: a fresh Alertmanager v4 body per request, so nothing is a duplicate.
-- ALERTS_PER_REQUEST (default 1), ALERTNAME (default BenchNoMatch), RUN (a prefix for fingerprints),
-- SERVICE (the `service` label every alert carries: one target for storm runbooks),
-- TARGETS (when set, `service` cycles through that many values: svc-0, svc-1, ...).
local per = tonumber(os.getenv("ALERTS_PER_REQUEST") or "1")
local name = os.getenv("ALERTNAME") or "BenchNoMatch"
local run = os.getenv("RUN") or "r"
local service = os.getenv("SERVICE") or "checkout"
local targets = tonumber(os.getenv("TARGETS") or "0")
local threads = 0
local counter = 0


function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

request = function()
  local alerts = {}
  for i = 1, per do
    counter = counter + 1
    local id = run .. "-" .. tid .. "-" .. counter
    local svc = service
    if targets > 0 then svc = "svc-" .. (counter % targets) end
    alerts[i] = '{"status":"firing","labels":{"alertname":"' .. name .. '","n":"' .. id ..
      '","service":"' .. svc .. '","severity":"warning"},"annotations":{},"startsAt":"2026-11-27T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"' .. id .. '"}'
  end
  local body = '{"version":"4","groupKey":"g","truncatedAlerts":0,"status":"firing","receiver":"pitcrew","groupLabels":{},' ..
    '"commonLabels":{},"commonAnnotations":{},"externalURL":"","alerts":[' .. table.concat(alerts, ",") .. ']}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

local non202 = 0
response = function(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors %d, p50 %.2f ms, p99 %.2f ms\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
