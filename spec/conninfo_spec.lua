-- Connection strings: parsed by libpq, ambiguous ones refused, secrets masked.
local conninfo = require("moonshift.conninfo")

describe("conninfo.parse", function()
  it("masks the password of a URL, percent-encoded or holding quotes and spaces", function()
    local info = assert(conninfo.parse("postgresql://app:pa%40ss'q w@db.example:5433/app"))
    assert.are.equal("postgresql://app:***@db.example:5433/app", info.display)
    assert.are.equal("pa@ss'q w", info.params.password)
    assert.are.equal("db.example", info.params.host)
  end)

  it("masks every keyword libpq marks secret, in a URL query and in key=value pairs", function()
    assert.are.equal("postgres://h/d?sslpassword=***&password=***&sslmode=require",
      conninfo.parse("postgres://h/d?sslpassword=k%20ey&password=pw&sslmode=require").display)
    assert.are.equal("host=h password=*** sslpassword = *** user=u",
      conninfo.parse("host=h password='a b\\'c' sslpassword = it's user=u").display)
    assert.are.equal("host=h password=***", conninfo.parse("host=h password=pa'ss").display)
  end)

  it("refuses a URL libpq would split inside the password, quoting none of it", function()
    for s, why in pairs({
      ["postgresql://u:zq@xv@h/d"] = "more than one \"@\"",
      ["postgresql://u:zq/xv@h/d"] = "an \"@\" after a \"/\"",
      ["postgresql://u:zq?xv@h/d"] = "a \"?\" before the \"@\"",
      ["postgresql://u:zqxv"] = "the port after the host is not a number",
    }) do
      local info, reason, hint = conninfo.parse(s)
      assert.is_nil(info)
      assert.matches(why, reason, 1, true)
      assert.matches("percent-encode", hint, 1, true)
      assert.is_nil((reason .. hint):find("zq", 1, true))
      assert.is_nil((reason .. hint):find("xv", 1, true))
    end
  end)

  it("refuses what libpq cannot parse, with libpq's reason but none of the string", function()
    local _, reason = conninfo.parse("host=h password='sekrit")
    assert.are.equal("libpq cannot parse it: unterminated quoted string", reason)
    _, reason = conninfo.parse("host=h password=sek rit")
    assert.are.equal("libpq cannot parse it: a word is not followed by \"=\"", reason)
    local ok, msg = conninfo.check("postgresql://u:s3cret%zz@h/d", "DATABASE_URL")
    assert.is_nil(ok)
    assert.matches("^the connection string in DATABASE_URL is refused: libpq cannot parse it: invalid percent%-", msg)
    assert.is_nil(msg:find("s3cret", 1, true))
  end)

  it("refuses a URI libpq would take for a database name (a stray quote, another scheme)",
    function()
      for _, s in ipairs({ "'postgresql://u:zqxv@h/d'", "postgresql+psycopg2://u:zqxv@h/d",
        "POSTGRESQL://u:zqxv@h/d" }) do
        local info, reason, hint = conninfo.parse(s)
        assert.is_nil(info, s)
        assert.matches("does not start with postgresql://", reason, 1, true)
        assert.is_nil((reason .. hint):find("zqxv", 1, true))
      end
    end)

  it("takes hosts with ports, IPv6 ones included", function()
    assert.are.equal("postgresql://u:***@[::1]:5433,h2:5434,h3/d",
      conninfo.parse("postgresql://u:zq@[::1]:5433,h2:5434,h3/d").display)
  end)

  it("takes a bare database name and the empty string as libpq does", function()
    assert.are.equal("mydb", conninfo.parse("mydb").display)
    assert.are.same({}, conninfo.parse("").params)
  end)
end)
