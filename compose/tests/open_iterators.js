// Test probe, loaded into dynalite with `node --require` (compose/tests/test_dynalite.py):
// counts the LevelDB iterators it opens (in all, and not closed yet) and prints both every
// 200 ms.
'use strict'
const { AbstractLevel } = require('abstract-level')
let open = 0
let opened = 0
const attach = AbstractLevel.prototype.attachResource
const detach = AbstractLevel.prototype.detachResource
AbstractLevel.prototype.attachResource = function (resource) {
  open++
  opened++
  return attach.call(this, resource)
}
AbstractLevel.prototype.detachResource = function (resource) {
  open--
  return detach.call(this, resource)
}
setInterval(() => console.log(`OPEN_ITERATORS ${open} ${opened}`), 200).unref()
