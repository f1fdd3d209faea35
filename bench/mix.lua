-- wrk: 90 % GET /api/usages/{1..IDS} (default 1000, all stored beforehand), 10 % POST.
local ids = tonumber(os.getenv("IDS") or "1000")
local body = '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
local post, gets = nil, {}

init = function(args)
  math.randomseed(os.time())
  post = wrk.format("POST", "/api/usages", {["Content-Type"] = "application/json"}, body)
  for i = 1, ids do
    gets[i] = wrk.format("GET", "/api/usages/" .. i)
  end
end

request = function()
  if math.random(10) == 1 then
    return post
  end
  return gets[math.random(ids)]
end
