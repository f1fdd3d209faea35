-- wrk: POST the README body with `Connection: close`: one request per connection.
wrk.method = "POST"
wrk.body = '{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Connection"] = "close"
