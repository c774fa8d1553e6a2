/**
 * Rollback: makes the live heads of a volume what they were at a snapshot's generation, in one
 * transaction, touching only the records that changed since (store/changed.ts), so its cost
 * follows the changes, not the volume. Nothing is destroyed: each restored head is a new version
 * born now (versions.ts keeps the replaced ones for newer snapshots), and a restored block map
 * entry shares the snapshot's block instead of copying it. Must run inside a transaction
 * callback of the store; the volume record is changed in place.
 */
import { Table, decodeInodeKey, indexOfBmapKey, nameOfKey, prefixRange, volumePrefix } from './keys.js'
import { changedRecords } from './changed.js'
import { SnapshotReader } from './snapshot-reader.js'
import type { VolumeRecord } from './records.js'
import type { Store } from './store.js'
import { VersionWriter } from './versions.js'

/** Rolls the volume back to generation `gen`; returns how many records changed. */
export function rollbackTo (store: Store, volume: VolumeRecord, gen: number): number {
  const reader = new SnapshotReader(store, volume.id, gen)
  const writer = new VersionWriter(store, volume)
  const changed = changedRecords(store, volume.id, gen, volume.gen)
  for (const { table, headKey } of changed) {
    const { ino } = decodeInodeKey(headKey)
    if (table === Table.Inode) {
      const old = reader.inode(ino)
      if (old === undefined) writer.removeInode(ino)
      else writer.putInode(ino, old)
    } else if (table === Table.Dirent) {
      const name = nameOfKey(headKey)
      const old = reader.dirent(ino, name)
      if (old === undefined) writer.removeDirent(ino, name)
      else writer.putDirent(ino, name, { ino: old.ino, type: old.type })
    } else if (table === Table.Xattr) {
      const name = nameOfKey(headKey)
      const old = reader.xattr(ino, name)
      if (old === undefined) writer.removeXattr(ino, name)
      else writer.putXattr(ino, name, old.v)
    } else {
      const index = indexOfBmapKey(headKey)
      const old = reader.block(ino, index)
      if (old === undefined) writer.removeBlock(ino, index)
      else writer.shareBlock(ino, index, old)
    }
  }
  // Files open and unlinked before the rollback are gone from the volume it restores, or linked.
  for (const key of [...store.orphans.getKeys(prefixRange(volumePrefix(volume.id)))]) {
    writer.clearOrphan(decodeInodeKey(key as Buffer).ino)
  }
  writer.finish(volume, true)
  return changed.length
}
