-- Connections to the target: the one password scrubber.
local db = require("moonshift.db")

describe("db.scrub", function()
  it("masks the password of a URI, a conninfo and any password given, from 3 characters", function()
    assert.are.equal("could not connect as app:***@h",
      db.scrub("could not connect as app:abc@h", "postgresql://app:abc@h/db"))
    assert.are.equal("bad token \"***\"",
      db.scrub("bad token \"s3cr\"", "host=h password='s3cr' user=u"))
    assert.are.equal("pg_dump: error: *** rejected",
      db.scrub("pg_dump: error: pw9 rejected", "", "pw9"))
  end)

  it("leaves a message alone when the password is shorter than it can mask safely", function()
    assert.are.equal("the ab table", db.scrub("the ab table", "postgresql://u:ab@h/db"))
  end)

  it("masks what a password cut at a bad percent escape leaves in libpq's message", function()
    local msg = db.scrub('invalid percent-encoded token: "s3cret"',
      "postgresql://u:s3cret%zz@h/db")
    assert.not_matches("s3c", msg)
  end)
end)
