-- Sends a migration's items to the server: pipelined between COPYs (one round trip for a
-- whole migration), or one by one with progress ticks; timed, with command tags and notices.
local fs = require("moonshift.fs")

local pipeline = {}

-- Waits for the server's next result without blocking Lua: every 250 ms the tick shows
-- progress and looks for a blocking session, and a signal's cancel is already on its way.
local function await(conn, on_tick)
  if not conn.wait_readable then return end
  while conn:busy() do
    if conn:wait_readable(250) then
      conn:consume_input()
    elseif on_tick then
      on_tick()
    end
  end
end

-- The notices the server sent since the last call, kept under the item that caused them.
local function collect_notices(conn, item, notices)
  local list = conn:notices()
  if (list[1] or list.dropped) and notices then
    notices[#notices + 1] = { item = item, list = list }
  end
end

-- Sends items[i..j] ({ text, params }) as one pipeline and reads every result, timing
-- each by its arrival and keeping its command tag. Returns true | nil, index of the first
-- failure, its error.
local function send(conn, items, i, j, timings, tags, o)
  local ok, err = conn:pipeline_enter()
  if not ok then return nil, i, err end
  for k = i, j do
    local params = items[k].params
    if params then
      ok, err = conn:send_query(items[k].text, table.unpack(params, 1, params.n))
    else
      ok, err = conn:send_query(items[k].text)
    end
    -- the server sends each result when its statement is done, so timings are true
    if ok and k < j then ok, err = conn:flush_request() end
    if not ok then
      conn:pipeline_exit()
      return nil, k, err
    end
  end
  conn:pipeline_sync()
  local started = fs.clock_ms()
  local failed_at, failure
  for k = i, j do
    await(conn, o.on_tick)
    local res, rerr = conn:get_result()
    if res == nil and not failed_at and not (rerr and rerr.aborted) then
      failed_at, failure = k, rerr
    end
    if res then tags[k] = res.command end
    collect_notices(conn, items[k], o.notices)
    if res == nil and rerr and rerr.kind == "connection_lost" then break end
    -- each query's results end with false (libpq's NULL result)
    local done = conn:get_result()
    while done ~= false and done ~= "sync" and done ~= nil do done = conn:get_result() end
    local now = fs.clock_ms()
    timings[k] = now - started
    started = now
  end
  if not (failure and failure.kind == "connection_lost") then
    local last = conn:get_result()
    while last ~= "sync" and last ~= nil do last = conn:get_result() end
    conn:pipeline_exit()
  end
  if failed_at then return nil, failed_at, failure end
  return true
end

--- Runs items ({ text, params, kind, copy_data }) on the open transaction, pipelined
-- between COPYs, or one by one (autocommit).
-- @param conn a moonshift.pg connection
-- @param o table|nil: one_by_one, on_tick (called every 250 ms while waiting), notices (an
--   array collecting { item, list } of the server's notices)
-- @return timings (ms per item), command tags (per pipelined item) | nil, index, err, tags
function pipeline.run(conn, items, o)
  o = o or {}
  local timings, tags = {}, {}
  local i = 1
  while i <= #items do
    local item = items[i]
    if item.kind == "copy" then
      local started = fs.clock_ms()
      local ok, err = conn:copy_in(item.text, item.copy_data or "")
      collect_notices(conn, item, o.notices)
      if not ok then return nil, i, err end
      timings[i] = fs.clock_ms() - started
      i = i + 1
    elseif o.one_by_one then
      local started = fs.clock_ms()
      local ok, err
      if conn.wait_readable then
        -- asynchronously, so progress and blockers show while CREATE INDEX CONCURRENTLY runs
        ok, err = conn:send_query(item.text)
        if ok then
          await(conn, o.on_tick)
          ok, err = conn:get_result()
          local rest = conn:get_result()
          while rest ~= false and rest ~= nil do rest = conn:get_result() end
        end
      else
        ok, err = conn:exec(item.text)
      end
      collect_notices(conn, item, o.notices)
      if not ok then return nil, i, err end
      timings[i] = fs.clock_ms() - started
      i = i + 1
    else
      local j = i
      while j < #items and items[j + 1].kind ~= "copy" do j = j + 1 end
      local ok, k, err = send(conn, items, i, j, timings, tags, o)
      if not ok then return nil, k or i, err, tags end
      i = j + 1
    end
  end
  return timings, tags
end

return pipeline
