-- wrk: POST the README body, DEPTH requests per write (default 1), with KEYS=1 each with a
-- unique Idempotency-Key, KEYS=0 without one, KEYS=pad each with a unique X-Unused-Header of
-- the same length instead (the same bytes and the same work for wrk as KEYS=1, which a server
-- ignores: what is left between pad and 1 is the key's own cost). One script for all three, so
-- that only the header differs. A value is UUID-shaped, 36 characters: NONCE (an integer,
-- default 0; give each run its own so that no key repeats on a server), the wrk thread's number
-- and a counter (12 decimal digits, from 100000000001).
local depth = tonumber(os.getenv("DEPTH") or "1")
local kind = os.getenv("KEYS") or "0"
local keyed = kind == "1" or kind == "pad"
local nonce = tonumber(os.getenv("NONCE") or "0") % 0x100000000
local body = '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
local threads = 0
local before, after, prefix, counter -- thread_no: a global that setup gives each thread

setup = function(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

init = function(args)
  local headers = {["Content-Type"] = "application/json"}
  if kind == "1" then headers["Idempotency-Key"] = "@KEY@" end
  if kind == "pad" then headers["X-Unused-Header"] = "@KEY@" end
  local one = wrk.format("POST", "/api/usages", headers, body)
  before, after = one, ""
  if keyed then
    local at = string.find(one, "@KEY@", 1, true)
    before, after = string.sub(one, 1, at - 1), string.sub(one, at + 5)
  end
  -- The key's constant part; the counter is added as 12 decimal digits (string.format would
  -- double wrk's CPU time per request when pipelined).
  prefix = string.format("%08x-%04x-4000-8000-", nonce, thread_no or 0)
  counter = 0
end

local batch = {}
request = function()
  for i = 1, depth do
    if keyed then
      counter = counter + 1
      batch[i] = before .. prefix .. (100000000000 + counter) .. after
    else
      batch[i] = before
    end
  end
  return table.concat(batch, "", 1, depth)
end
