/**
 * `snapctl diff`: the paths added (+), removed (-), modified (M) and renamed (R) between two
 * generations of a volume, in the manner of `zfs diff`. The changed records come from the births
 * index and the dead list (store/changed.ts), so the cost follows the changes, not the volume;
 * paths are rebuilt from each inode's `parent` and a search of that directory's entries.
 * An access time alone is not a modification, nor a record rewritten as it was (a rollback, or a
 * block map entry that shares the same block).
 */
import { Table, decodeInodeKey, indexOfBmapKey, nameOfKey } from '../store/keys.js'
import { changedRecords } from '../store/changed.js'
import { SnapshotReader } from '../store/snapshot-reader.js'
import { ROOT_INO, type InodeRecord } from '../store/records.js'
import type { Store } from '../store/store.js'
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from './inode.js'

export type DiffChange = '+' | '-' | 'M' | 'R'
export type DiffType = 'file' | 'directory' | 'symlink' | 'other'

export interface DiffEntry {
  change: DiffChange
  /** Path in the mount (at the older generation for - and R, the newer one for + and M). */
  path: string
  /** For R: the path in the newer generation. */
  to?: string
  type: DiffType
}

interface Name { parent: number, name: string }

/** The changes from generation `from` to generation `to` (`from` < `to`), sorted by path. */
export function diffGenerations (store: Store, vol: number, from: number, to: number): DiffEntry[] {
  const older = new Paths(new SnapshotReader(store, vol, from))
  const newer = new Paths(new SnapshotReader(store, vol, to))
  const removed = new Map<number, Name[]>()
  const added = new Map<number, Name[]>()
  const modified = new Set<number>()
  const push = (map: Map<number, Name[]>, ino: number, name: Name): void => {
    const list = map.get(ino)
    if (list === undefined) map.set(ino, [name])
    else list.push(name)
  }
  for (const { table, headKey } of changedRecords(store, vol, from, to)) {
    const { ino } = decodeInodeKey(headKey)
    if (table === Table.Dirent) {
      const name = nameOfKey(headKey)
      const before = older.reader.dirent(ino, name)
      const after = newer.reader.dirent(ino, name)
      if (before?.ino === after?.ino) continue
      const entry = { parent: ino, name: name.toString('utf8') }
      if (before !== undefined) push(removed, before.ino, entry)
      if (after !== undefined) push(added, after.ino, entry)
      modified.add(ino)
    } else if (table === Table.Inode) {
      const before = older.reader.inode(ino)
      const after = newer.reader.inode(ino)
      if (before !== undefined && after !== undefined && sameButAccess(before, after)) continue
      modified.add(ino)
    } else if (table === Table.Bmap) {
      const index = indexOfBmapKey(headKey)
      const before = older.reader.block(ino, index)
      const after = newer.reader.block(ino, index)
      if (before?.block === after?.block && before?.length === after?.length) continue
      modified.add(ino)
    } else {
      const name = nameOfKey(headKey)
      const before = older.reader.xattr(ino, name)?.v
      const after = newer.reader.xattr(ino, name)?.v
      if (before !== undefined && after !== undefined && Buffer.from(before).equals(Buffer.from(after))) continue
      modified.add(ino)
    }
  }

  const entries: DiffEntry[] = []
  for (const [ino, gone] of removed) {
    const came = added.get(ino)
    if (gone.length === 1 && came?.length === 1) {
      entries.push({ change: 'R', path: older.pathOfName(gone[0]), to: newer.pathOfName(came[0]), type: newer.typeOf(ino) })
      added.delete(ino)
      continue
    }
    for (const name of gone) entries.push({ change: '-', path: older.pathOfName(name), type: older.typeOf(ino) })
  }
  for (const [ino, came] of added) {
    for (const name of came) entries.push({ change: '+', path: newer.pathOfName(name), type: newer.typeOf(ino) })
  }
  for (const ino of modified) {
    if (removed.has(ino) || added.has(ino)) continue
    if (older.reader.inode(ino) === undefined || newer.reader.inode(ino) === undefined) continue
    entries.push({ change: 'M', path: newer.pathOf(ino), type: newer.typeOf(ino) })
  }
  return entries.sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0)
}

function sameButAccess (a: InodeRecord, b: InodeRecord): boolean {
  const withoutAccess = ({ b: _birth, atime: _atime, ns, ...rest }: InodeRecord): object =>
    ({ ...rest, ns: { ...ns, a: undefined } })
  return JSON.stringify(withoutAccess(a)) === JSON.stringify(withoutAccess(b))
}

/** Paths of inodes at one generation, found through `parent` and the entries of that directory. */
class Paths {
  readonly reader: SnapshotReader
  /** Per directory: inode → one of its names there. */
  private readonly names = new Map<number, Map<number, string>>()

  constructor (reader: SnapshotReader) {
    this.reader = reader
  }

  typeOf (ino: number): DiffType {
    const type = (this.reader.inode(ino)?.mode ?? 0) & S_IFMT
    return type === S_IFREG ? 'file' : type === S_IFDIR ? 'directory' : type === S_IFLNK ? 'symlink' : 'other'
  }

  pathOfName (name: Name): string {
    const dir = this.pathOf(name.parent)
    return dir === '/' ? `/${name.name}` : `${dir}/${name.name}`
  }

  /** The path of an inode, or `<inode N>` for a part whose name cannot be found. */
  pathOf (ino: number): string {
    const parts: string[] = []
    let cursor = ino
    for (let depth = 0; cursor !== ROOT_INO && depth < 4096; depth++) {
      const parent = this.reader.inode(cursor)?.parent
      const name = parent === undefined ? undefined : this.nameIn(parent, cursor)
      if (parent === undefined || name === undefined) {
        parts.unshift(`<inode ${cursor}>`)
        break
      }
      parts.unshift(name)
      cursor = parent
    }
    return '/' + parts.join('/')
  }

  private nameIn (dir: number, ino: number): string | undefined {
    let names = this.names.get(dir)
    if (names === undefined) {
      names = new Map()
      for (const [name, entry] of this.reader.dirents(dir)) if (!names.has(entry.ino)) names.set(entry.ino, name)
      this.names.set(dir, names)
    }
    return names.get(ino)
  }
}
