-- wrk script: the bench's realistic Evolution traffic (bench/traffic.py's pool), at maximum rate.
--
--   wrk -s bench/traffic.lua URL -- DEPLOYMENT POOL ROUTE TAG ACKED
--
-- DEPLOYMENT: lines "secret<TAB>instance<TAB>instance-uuid"; POOL: the templates (see
-- bench/traffic.py); ROUTE: webhook | null | naive (the real receive path, the null ceiling or
-- the naive per-request baseline); TAG: 4 hex digits that make this run's message ids unique;
-- ACKED: gets one "instance<TAB>message-id" line per message (messages.upsert / send.message)
-- the server answered 2xx, and ACKED.stats the run's counts.
--
-- Each thread cycles through the pool with its own counter; "@R<n>@" in a template becomes the
-- id of the message this thread sent n requests earlier, so ids never repeat and receipts refer
-- to real messages. Each request carries X-Request-Id "<kind>.<instance>.<id>", which the server
-- echoes: a response callback learns nothing else about its request, and the 0-lost check in
-- bench/load.py must work on exactly the ids that were acknowledged.

local PREFIX = {
  webhook = "/api/webhooks/evolution/",
  null = "/bench/null/",
  naive = "/bench/naive/",
}

-- main state --------------------------------------------------------------------------------

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local path = threads[1]:get("acked_path")
  local out = assert(io.open(path, "w"))
  local codes = {}
  local sent = 0
  for _, t in ipairs(threads) do
    local acked = t:get("acked")
    for i = 1, #acked do
      out:write(acked[i], "\n")
    end
    for code, n in pairs(t:get("codes")) do
      codes[code] = (codes[code] or 0) + n
    end
    sent = sent + t:get("counter")
  end
  out:close()
  local stats = assert(io.open(path .. ".stats", "w"))
  local parts = {}
  for code, n in pairs(codes) do
    parts[#parts + 1] = string.format('"%s": %d', code, n)
  end
  stats:write(string.format(
    '{"requests": %d, "sent": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}, "codes": {%s}}\n',
    summary.requests, sent, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ", ")))
  stats:close()
end

-- thread state ------------------------------------------------------------------------------

local names = {}
local pool = {}
local tag
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/plain, */*",
  ["User-Agent"] = "axios/1.12.2",
}
counter = 0
acked = {}
codes = {}

function init(args)
  local deployment, pool_path, route = args[1], args[2], args[3]
  tag, acked_path = args[4], args[5]
  local prefix = assert(PREFIX[route], "route must be webhook, null or naive")
  local secrets = {}
  for line in io.lines(deployment) do
    local secret, name = line:match("^(%S+)\t(%S+)\t%S+$")
    secrets[#secrets + 1] = secret
    names[#names + 1] = name
  end
  for line in io.lines(pool_path) do
    local kind, ii, event, body = line:match("^(%a)\t(%d+)\t([^\t]+)\t(.*)$")
    ii = tonumber(ii) + 1
    -- split the body at its slots once: { text, back, text, back, ..., text }
    local parts, pos = {}, 1
    while true do
      local s, e, back = body:find("@R(%d+)@", pos)
      if not s then
        break
      end
      parts[#parts + 1] = body:sub(pos, s - 1)
      parts[#parts + 1] = tonumber(back)
      pos = e + 1
    end
    parts[#parts + 1] = body:sub(pos)
    pool[#pool + 1] = {
      kind = kind,
      ii = ii,
      path = prefix .. secrets[ii] .. "/" .. event:gsub("%.", "-"),
      parts = parts,
    }
  end
  assert(#pool > 0, "empty pool " .. pool_path)
end

local function id_of(n)
  return string.format("3EB0%s%X%011X", tag, tid, n)
end

local pieces = {}

function request()
  local t = pool[counter % #pool + 1]
  local parts = t.parts
  local own = id_of(counter)
  for i = 1, #parts do
    local p = parts[i]
    if type(p) == "number" then
      pieces[i] = p == 0 and own or id_of(counter - p)
    else
      pieces[i] = p
    end
  end
  for i = #parts + 1, #pieces do
    pieces[i] = nil
  end
  headers["X-Request-Id"] = t.kind .. "." .. t.ii .. "." .. own
  counter = counter + 1
  return wrk.format("POST", t.path, headers, table.concat(pieces))
end

function response(status, hdrs, body)
  codes[status] = (codes[status] or 0) + 1
  if status < 200 or status > 299 then
    return
  end
  local rid = hdrs["x-request-id"] or hdrs["X-Request-Id"]
  if rid and rid:byte(1) == 109 then -- "m": a message was acknowledged
    local ii, id = rid:match("^m%.(%d+)%.(.+)$")
    acked[#acked + 1] = names[tonumber(ii)] .. "\t" .. id
  end
end
