-- wrk: POST the README body, DEPTH requests per write (default 16).
local depth = tonumber(os.getenv("DEPTH") or "16")
local body = '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
local req

init = function(args)
  local one = wrk.format("POST", "/api/usages", {["Content-Type"] = "application/json"}, body)
  req = string.rep(one, depth)
end

request = function()
  return req
end
