-- Writes a large, ordinary-looking migration for the splitter benchmark:
-- moonshift --run-lua bench/gen_migration.lua OUT [MEGABYTES=50]
local out_path = assert(arg[1], "usage: gen_migration.lua OUT [MEGABYTES]")
local target = math.floor((tonumber(arg[2]) or 50) * 1024 * 1024)

local fmt = string.format

-- A fixed linear congruential generator: the same file on every run and machine.
local state = 12345
local function rand(n)
  state = (state * 1103515245 + 12345) % 2147483648
  return state % n + 1
end

local TYPES = { "int", "bigint", "text", "varchar(255)", "timestamptz", "boolean", "jsonb",
  "numeric(12, 2)", "uuid", "bytea" }
local WORDS = { "user", "account", "project", "repository", "artifact", "tag", "label", "policy",
  "scan", "report", "quota", "member", "role", "event", "task", "job", "blob", "audit" }

local function word() return WORDS[rand(#WORDS)] end

local function create_table(i)
  local name = fmt("%s_%d", word(), i)
  local cols = { "  id serial PRIMARY KEY" }
  for c = 1, 3 + rand(8) do
    cols[#cols + 1] = fmt("  %s_%d %s%s", word(), c, TYPES[rand(#TYPES)],
      rand(3) == 1 and " NOT NULL" or "")
  end
  cols[#cols + 1] = "  creation_time timestamp default CURRENT_TIMESTAMP"
  return name, fmt("-- %s holds the %ss of a %s\nCREATE TABLE IF NOT EXISTS %s (\n%s\n);\n\n",
    name, word(), word(), name, table.concat(cols, ",\n"))
end

-- One unit: a table and what migrations usually do around it, in the mix of the harbor
-- corpus (about 250 bytes per statement).
local function pieces(i)
  local name, ddl = create_table(i)
  local out = { fmt("/* %s: the %s of %s, added in release %d.%d */\n", name, word(), word(),
    rand(3), rand(20)), ddl }
  for _ = 1, rand(3) - 1 do
    out[#out + 1] = fmt("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s_%d %s DEFAULT NULL;\n", name,
      word(), rand(99), TYPES[rand(#TYPES)])
  end
  for _ = 1, rand(2) - 1 do
    out[#out + 1] = fmt("CREATE INDEX IF NOT EXISTS idx_%s_%s ON %s (%s_1, creation_time);\n",
      name, word(), name, word())
  end
  for _ = 1, rand(2) - 1 do
    out[#out + 1] = fmt("UPDATE %s SET note = 'it''s; %s' WHERE id IN (SELECT id FROM %s "
      .. "WHERE creation_time < '2020-01-01');\n", name, word(), name)
  end
  out[#out + 1] = fmt("INSERT INTO %s (id, note) VALUES (%d, 'first; %s'), (%d, E'tab\\t%s');\n",
    name, rand(1000), word(), rand(1000), word())
  if rand(2) == 1 then
    out[#out + 1] = fmt([[

/* migrate the old %s rows */
DO $$
DECLARE
    r RECORD;
BEGIN
    FOR r IN SELECT * FROM %s WHERE note IS NOT NULL
    LOOP
      IF r.note = 'N/A' OR r.note = '' THEN
          UPDATE %s SET note = NULL WHERE id = r.id; -- cleanup; see %s
      ELSIF r.note LIKE '%%;%%' THEN
          INSERT INTO audit_log (resource, operation) VALUES (r.note, 'split');
      END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '%s_uniq') THEN
        ALTER TABLE %s ADD CONSTRAINT %s_uniq UNIQUE (id, creation_time);
    END IF;
END $$;
]], word(), name, name, word(), name, name, name)
  end
  if rand(3) == 1 then
    out[#out + 1] = fmt([[

CREATE OR REPLACE FUNCTION %s_touch() RETURNS trigger AS $body$
BEGIN
  NEW.creation_time := now(); -- keep the clock honest
  /* a block comment; with a semicolon */
  RETURN NEW;
END;
$body$ LANGUAGE plpgsql;

CREATE TRIGGER %s_touch BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s_touch();
]], name, name, name, name)
  end
  if rand(8) == 1 then
    out[#out + 1] = fmt([[
CREATE OR REPLACE FUNCTION %s_count(min_id int) RETURNS bigint LANGUAGE sql
BEGIN ATOMIC
  SELECT count(*) FROM %s WHERE id >= min_id;
END;
]], name, name)
  end
  if rand(4) == 1 then
    out[#out + 1] = fmt([[
CREATE OR REPLACE VIEW %s_view AS
  SELECT id, CASE WHEN id > 10 THEN 'big' ELSE 'small' END AS size, E'tab\there' AS e
  FROM %s
  WHERE creation_time > now() - interval '30 days';
]], name, name)
  end
  out[#out + 1] = "\n"
  return table.concat(out)
end

local f = assert(io.open(out_path, "wb"))
local written, i, buf = 0, 0, {}
while written < target do
  i = i + 1
  local p = pieces(i)
  buf[#buf + 1] = p
  written = written + #p
  if #buf >= 256 then
    f:write(table.concat(buf))
    buf = {}
  end
end
f:write(table.concat(buf))
f:close()
io.stderr:write(fmt("wrote %s: %.1f MB, %d tables\n", out_path, written / 1048576, i))
