-- Connection strings as libpq reads them: refused when ambiguous, shown with secrets masked.
local pg = require("moonshift.pg")
local redact = require("moonshift.redact")

local fmt = string.format

local conninfo = {}

local MASK = "***"

local PREFIXES = { "postgresql://", "postgres://" } -- libpq's, compared as libpq does

-- The keywords libpq marks as secret (password, sslpassword, ...), as a set; asked once.
local secret_set
local function secret_keywords()
  if not secret_set then
    secret_set = {}
    for _, k in ipairs(pg.secret_keywords()) do secret_set[k] = true end
  end
  return secret_set
end

local function uri_rest(s)
  for _, p in ipairs(PREFIXES) do
    if s:sub(1, #p) == p then return s:sub(#p + 1), p end
  end
  return nil
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Why libpq would split a URI elsewhere than its author meant (a raw "@", "/" or "?" in the
-- password), or nil. libpq takes the user name and password up to the first "@" before the
-- first "/"; a host never holds "@", nor a database name written by someone who meant it.
local function uri_problem(rest)
  local slash = rest:find("/", 1, true) or #rest + 1
  local auth_end = math.min(slash, rest:find("?", 1, true) or #rest + 1)
  local auth = rest:sub(1, auth_end - 1)
  local _, ats = auth:gsub("@", "")
  if ats > 1 then return "it holds more than one \"@\" before the host" end
  if ats == 0 then
    local at = rest:find("@", 1, true)
    if at and at < slash then
      return "it holds a \"?\" before the \"@\" that ends the password"
    end
    if slash <= #rest then
      local path_end = rest:find("?", slash, true) or #rest + 1
      if rest:sub(slash, path_end - 1):find("@", 1, true) then
        return "it holds an \"@\" after a \"/\", as a \"/\" in the password would"
      end
    end
  end
  -- libpq would report a password cut short (at a line break, say) as a port
  for spec in (auth:match("@(.*)$") or auth):gmatch("[^,]+") do
    local port = spec:match("^%[.*%]:(.*)$") or (not spec:find("^%[") and spec:match(":(.*)$"))
    if port and not port:match("^%d*$") then
      return "the port after the host is not a number, as when a password is cut short"
    end
  end
  return nil
end

-- s with the password of its user info and the values of secret query parameters masked
-- (uri_problem found nothing, libpq parsed it); also the raw (encoded) secrets.
local function mask_uri(prefix, rest)
  local secrets = secret_keywords()
  local raw = {}
  local slash = rest:find("/", 1, true) or #rest + 1
  local q = rest:find("?", 1, true)
  local auth_end = math.min(slash, q or #rest + 1)
  local auth = rest:sub(1, auth_end - 1)
  local at = auth:find("@", 1, true)
  local head = auth
  if at then
    local user, pw = auth:sub(1, at - 1):match("^([^:]*):(.*)$")
    if user then
      raw[#raw + 1] = pw
      head = user .. ":" .. MASK .. auth:sub(at)
    end
  end
  local path = rest:sub(auth_end, (q or #rest + 1) - 1)
  local query = q and rest:sub(q + 1) or nil
  if query then
    local parts = {}
    for param in (query .. "&"):gmatch("([^&]*)&") do
      local k, v = param:match("^([^=]*)=(.*)$")
      if k and secrets[percent_decode(k)] then
        raw[#raw + 1] = v
        param = k .. "=" .. MASK
      end
      parts[#parts + 1] = param
    end
    query = "?" .. table.concat(parts, "&")
  end
  return prefix .. head .. path .. (query or ""), raw
end

-- The key=value pairs of s as libpq's grammar splits them: { key, first, last, value }
-- (first..last: the value as written, quotes included). nil when s does not follow it.
local function keyword_values(s)
  local out, i, n = {}, 1, #s
  local function skip_space()
    while i <= n and s:sub(i, i):match("%s") do i = i + 1 end
  end
  while true do
    skip_space()
    if i > n then return out end
    local k = s:match("^[^=%s]+", i)
    if not k then return nil end
    i = i + #k
    skip_space()
    if s:sub(i, i) ~= "=" then return nil end
    i = i + 1
    skip_space()
    local first, chars = i, {}
    local quoted = s:sub(i, i) == "'"
    if quoted then i = i + 1 end
    while i <= n do
      local c = s:sub(i, i)
      if quoted and c == "'" then break end
      if not quoted and c:match("%s") then break end
      if c == "\\" and i < n then
        i = i + 1
        c = s:sub(i, i)
      end
      chars[#chars + 1] = c
      i = i + 1
    end
    if quoted then
      if i > n then return nil end
      i = i + 1
    end
    out[#out + 1] = { key = k, first = first, last = i - 1, value = table.concat(chars) }
  end
end

-- "k=v ..." from libpq's own parse, secrets masked: what is shown when s cannot be masked
-- where it stands.
local function rebuilt(params)
  local secrets, keys, parts = secret_keywords(), {}, {}
  for k in pairs(params) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = secrets[k] and MASK or params[k]
    if not v:match("^[^%s'\\]+$") then v = "'" .. v:gsub("[\\']", "\\%0") .. "'" end
    parts[#parts + 1] = k .. "=" .. v
  end
  return table.concat(parts, " ")
end

--- A connection string read as libpq reads it, or why it cannot be used safely. Refused:
-- what libpq cannot parse, and a URI whose user info libpq would split elsewhere than its
-- author meant (a raw "@", "/" or "?" in the password would otherwise end up in a host or
-- port name that messages quote). The reason quotes nothing of s.
-- @param s string: a URI, key=value pairs, a bare database name, or "" (libpq's defaults)
-- @return info ({ params = { keyword = value }, display = s with every secret masked,
--   secrets = { the secret values, as parsed and as written } }) | nil, reason, hint
function conninfo.parse(s)
  local rest, prefix = uri_rest(s)
  if not rest and not s:find("=", 1, true) then
    -- libpq takes it as a database name (expand_dbname), and the server's "database ...
    -- does not exist" would quote it: a URI spelled otherwise (a stray quote, another
    -- scheme, capitals) would show its password there
    if s:find("://", 1, true) then
      return nil, "it looks like a URI but does not start with postgresql:// or " ..
        "postgres://, so libpq would take all of it for a database name",
        "write it as postgresql://user:password@host/dbname, without quotes around it"
    end
    return { params = s ~= "" and { dbname = s } or {}, display = s, secrets = {} }
  end
  if rest then
    local why = uri_problem(rest)
    if why then
      return nil, why, "percent-encode special characters in the URL's user name and " ..
        "password: @ as %40, / as %2F, ? as %3F, space as %20"
    end
  end
  local params, err = pg.conninfo_parse(s)
  if not params then
    local hint = rest and "percent-encode special characters in the URL's user name and " ..
      "password: @ as %40, / as %2F, % as %25" or "quote a value that holds a space, and " ..
      "write a quote or backslash in it as \\' or \\\\: password='it\\'s'"
    return nil, "libpq cannot parse it: " .. (err.reason or "malformed"), hint
  end
  local secrets, found = secret_keywords(), {}
  for k, v in pairs(params) do
    if secrets[k] and v ~= "" then found[#found + 1] = v end
  end
  local display, raw
  if rest then
    display, raw = mask_uri(prefix, rest)
  else
    local pairs_ = keyword_values(s)
    if pairs_ then
      local last, out, pos = {}, {}, 1
      for _, p in ipairs(pairs_) do last[p.key] = p.value end
      local same = true
      for k, v in pairs(last) do
        if params[k] ~= v then same = false end
      end
      if same then
        raw = {}
        for _, p in ipairs(pairs_) do
          if secrets[p.key] then
            out[#out + 1] = s:sub(pos, p.first - 1) .. MASK
            pos = p.last + 1
            raw[#raw + 1] = s:sub(p.first, p.last)
          end
        end
        out[#out + 1] = s:sub(pos)
        display = table.concat(out)
      end
    end
  end
  for _, v in ipairs(found) do -- belt and braces: a secret still in sight shows the parse
    if display and #v >= 3 and display:find(v, 1, true) then display = nil end
  end
  if not display then display, raw = rebuilt(params), {} end
  display = redact.secrets(display) -- a URI inside a value (dbname=postgresql://...) too
  for _, v in ipairs(raw) do
    if v ~= "" and v ~= MASK then found[#found + 1] = v end
  end
  return { params = params, display = display, secrets = found }
end

--- Refuses a configured connection string that cannot be used safely, without showing it.
-- @param s string: the connection string
-- @param source string: where it came from ("--database", "DATABASE_URL", ...)
-- @return info (as conninfo.parse) | nil, message
function conninfo.check(s, source)
  local info, why, hint = conninfo.parse(s)
  if info then return info end
  return nil, fmt("the connection string in %s is refused: %s (it is not shown " ..
    "because it may hold a password); %s", source, why, hint)
end

--- The connection string for messages and logs: every secret masked, or a placeholder
-- when it is refused (conninfo.check refuses those before anything connects).
-- @param s string
-- @return string
function conninfo.display(s)
  local info = conninfo.parse(s)
  return info and info.display or "(a connection string moonshift refuses; not shown)"
end

--- The secret values a connection string holds, decoded and as written (for scrubbing
-- messages that may quote them); {} when it cannot be parsed.
-- @param s string
-- @return array of strings
function conninfo.secrets(s)
  local info = conninfo.parse(s)
  return info and info.secrets or {}
end

return conninfo
