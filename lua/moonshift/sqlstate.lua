-- The SQLSTATEs moonshift branches on, by name (PostgreSQL's errcodes.txt), in one place.
local sqlstate = {
  QUERY_CANCELED = "57014", -- statement_timeout, or a cancel (Ctrl-C)
  LOCK_NOT_AVAILABLE = "55P03", -- lock_timeout
  DEADLOCK_DETECTED = "40P01",
  UNDEFINED_OBJECT = "42704", -- also what the transaction guard raises (runner.lua)
  INSUFFICIENT_PRIVILEGE = "42501", -- another tool's history table we may not read (peers)
}

--- Whether a SQLSTATE says the session is gone: the server is ending it (57P01 terminated
-- by an administrator, 57P02 crash shutdown, 57P03 cannot connect now) or the link broke
-- (class 08).
-- @param state string|nil
-- @return boolean
function sqlstate.connection_gone(state)
  state = state or ""
  return state:match("^57P0[123]") ~= nil or state:sub(1, 2) == "08"
end

return sqlstate
