/**
 * Applies a taken change set and dirty pages to the store, inside the transaction callback that
 * writeback.ts opens. Order matters and is fixed: deletions of whole inodes, then truncations,
 * then data pages (written after the truncations they follow), then directory entries, xattrs,
 * inode records, orphans and the volume's counters. Files restored from a snapshot take their
 * shared blocks right after the deletions, so later truncations and writes apply over them. All
 * of it commits together or not at all.
 */
import { VersionWriter } from '../store/versions.js'
import { recordOf, type Inode } from './inode.js'
import type { ChangeSet } from './changes.js'
import type { Page } from '../cache/pagecache.js'
import type { LiveVolume } from './volume.js'

/**
 * Applies `changes` and `pages`. Sector counts of inodes change in memory as blocks are stored or
 * dropped; each change is also added to `sectors` (per inode) so a failed commit can undo them.
 * (A restored file's sectors are set when it is created, so sharing its blocks counts nothing.)
 */
export function applyChanges (volume: LiveVolume, changes: ChangeSet, pages: Page[], sectors: Map<number, number>): void {
  const writer = new VersionWriter(volume.store, volume.record)
  const bs = volume.blockSize
  const account = (inode: Inode, delta: number): void => {
    if (delta === 0) return
    inode.blocks += delta
    sectors.set(inode.ino, (sectors.get(inode.ino) ?? 0) + delta)
  }
  for (const ino of changes.removed) {
    writer.removeBlocksFrom(ino, 0)
    writer.removeXattrsOf(ino)
    writer.removeInode(ino)
  }
  for (const [ino, share] of changes.shares) {
    if (changes.removed.has(ino)) continue
    for (const [index, map] of share.reader.blocks(share.ino)) writer.shareBlock(ino, index, map)
  }
  for (const [ino, from] of changes.truncations) {
    if (changes.removed.has(ino)) continue
    const inode = volume.loaded(ino)
    const delta = writer.removeBlocksFrom(ino, from)
    if (inode !== undefined) {
      account(inode, delta)
      changes.inodes.add(ino)
    }
  }
  for (const page of pages) {
    const inode = volume.loaded(page.ino)
    if (inode === undefined || changes.removed.has(page.ino)) continue
    const start = page.index * bs
    const length = Math.min(bs, Math.max(0, inode.size - start))
    const data = page.data.subarray(0, length)
    account(inode, length === 0 || isZero(data)
      ? writer.removeBlock(page.ino, page.index)
      : writer.putBlock(page.ino, page.index, data))
    changes.inodes.add(page.ino)
  }
  for (const [parent, names] of changes.dirents) {
    for (const [name, entry] of names) {
      const key = Buffer.from(name, 'utf8')
      if (entry === null) writer.removeDirent(parent, key)
      else writer.putDirent(parent, key, entry)
    }
  }
  for (const [ino, names] of changes.xattrs) {
    if (changes.removed.has(ino)) continue
    for (const [name, value] of names) {
      const key = Buffer.from(name, 'utf8')
      if (value === null) writer.removeXattr(ino, key)
      else writer.putXattr(ino, key, value)
    }
  }
  for (const ino of changes.accessed) changes.inodes.add(ino)
  for (const ino of changes.inodes) {
    const inode = volume.loaded(ino)
    if (inode !== undefined && !changes.removed.has(ino)) writer.putInode(ino, { b: 0, ...recordOf(inode) })
  }
  for (const [ino, orphan] of changes.orphans) {
    if (orphan) writer.markOrphan(ino)
    else writer.clearOrphan(ino)
  }
  writer.finish(volume.record, changes.volume)
}

const ZERO = Buffer.alloc(1024 * 1024)

function isZero (data: Buffer): boolean {
  return data.equals(ZERO.subarray(0, data.length))
}
