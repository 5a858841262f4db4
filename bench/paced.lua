-- wrk script: like alerts.lua, but each connection waits DELAY_MS between
-- requests, so the offered load is about connections * 1000 / DELAY_MS per
-- second (less when answers are slow: that shows as a lower achieved rate).
dofile("bench/alerts.lua")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "10")
function delay()
  return delay_ms
end
