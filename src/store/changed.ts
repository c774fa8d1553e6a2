/**
 * What changed in a volume between two generations, from the indexes alone: a record changed in
 * (from, to] has a version born then (`births`) or a version that died then (`deadlist`). The
 * scan reads those two ranges and nothing else, so it costs time in proportion to the changes,
 * not to the volume. Reads only.
 */
import { Table, birthPrefix, decodeBirthKey, decodeDeadKey, deadPrefix } from './keys.js'
import type { Store } from './store.js'

export interface ChangedRecord { table: Table, headKey: Buffer }

/** Each record of volume `vol` with a version born or dead in generations (from, to], once. */
export function changedRecords (store: Store, vol: number, from: number, to: number): ChangedRecord[] {
  const seen = new Map<string, ChangedRecord>()
  const note = (table: Table, headKey: Buffer): void => {
    const id = `${table}:${headKey.toString('hex')}`
    if (!seen.has(id)) seen.set(id, { table, headKey: Buffer.from(headKey) })
  }
  for (const key of store.births.getKeys({ start: birthPrefix(vol, from + 1), end: birthPrefix(vol, to + 1) })) {
    const { table, headKey } = decodeBirthKey(key as Buffer)
    note(table, headKey)
  }
  for (const key of store.deadlist.getKeys({ start: deadPrefix(vol, from + 1), end: deadPrefix(vol, to + 1) })) {
    const { table, headKey } = decodeDeadKey(key as Buffer)
    note(table, headKey)
  }
  return [...seen.values()]
}
