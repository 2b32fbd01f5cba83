// The addon's declared surface (src/native.ts) against what the loaded binding exports: every declared class,
// method, function and value exists, and nothing exported is undeclared.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadNative, NATIVE_CLASSES, NATIVE_FUNCTIONS, NATIVE_VALUES } from '../../src/native.js';

const sorted = (names: Iterable<string>) => [...names].sort();

test('the binding exports exactly the declared classes, functions and values', () => {
  const addon = loadNative() as unknown as Record<string, unknown>;
  assert.deepEqual(sorted(Object.keys(addon)), sorted([...Object.keys(NATIVE_CLASSES), ...NATIVE_FUNCTIONS, ...NATIVE_VALUES]));
  for (const name of NATIVE_FUNCTIONS) assert.equal(typeof addon[name], 'function', name);
  assert.equal(typeof addon.pageSize, 'number');
  assert.equal(typeof addon.constants, 'object');
});

test('each native class has exactly the declared methods', () => {
  const addon = loadNative() as unknown as Record<string, { prototype: object }>;
  for (const [name, methods] of Object.entries(NATIVE_CLASSES)) {
    const cls = addon[name];
    assert.equal(typeof cls, 'function', `${name} is a class`);
    const own = Object.getOwnPropertyNames(cls.prototype).filter((m) => m !== 'constructor');
    assert.deepEqual(sorted(own), sorted(methods), `${name}'s methods`);
    for (const method of methods) {
      assert.equal(typeof (cls.prototype as Record<string, unknown>)[method], 'function', `${name}.${method}`);
    }
  }
});
