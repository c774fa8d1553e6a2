/**
 * Paths to inodes, for the path-based fuse-native transport: the core speaks inode numbers only.
 *
 * libfuse 2.9's high-level API hides a file that is unlinked (or renamed over) while open by
 * renaming it to `.fuse_hiddenXXXX` and unlinking that name at the last close. Real unlink
 * semantics need the name gone at once, so such a rename becomes a real unlink here and the
 * hidden name is only an alias, known to this table, for the open inode. Aliases are keyed by the
 * directory's inode, so they survive renames of that directory or its ancestors.
 */
import { fail } from '../errors.js'
import { ROOT_INO } from '../store/records.js'
import { NAME_MAX } from '../store/keys.js'
import type { LiveVolume } from '../fs/volume.js'

const HIDDEN = /^\.fuse_hidden[0-9a-f]+$/

export function isHiddenName (name: string): boolean {
  return HIDDEN.test(name)
}

export class PathTable {
  private readonly volume: LiveVolume
  /** "directory inode/hidden name" → inode of a file unlinked while open. */
  private readonly hidden = new Map<string, number>()

  constructor (volume: LiveVolume) {
    this.volume = volume
  }

  /** The inode at `path` ("/a/b"); ENOENT or ENOTDIR when a component is missing or not a directory. */
  resolve (path: string): number {
    let ino = ROOT_INO
    let start = 1
    const length = path.length
    while (start < length) {
      let end = path.indexOf('/', start)
      if (end === -1) end = length
      if ((end - start) * 3 > NAME_MAX && Buffer.byteLength(path.slice(start, end)) > NAME_MAX) fail('ENAMETOOLONG', path.slice(start, end))
      if (end > start) ino = this.step(ino, path.slice(start, end))
      start = end + 1
    }
    return ino
  }

  /** The parent directory's inode and the last name of `path`. */
  parent (path: string): { parent: number, name: string } {
    const slash = path.lastIndexOf('/')
    const name = path.slice(slash + 1)
    if (name.length === 0) fail('EINVAL', 'the root has no parent')
    return { parent: this.resolve(slash <= 0 ? '/' : path.slice(0, slash)), name }
  }

  addHidden (path: string, ino: number): void {
    const { parent, name } = this.parent(path)
    this.hidden.set(`${parent}/${name}`, ino)
  }

  /** Forgets a hidden alias; true if `path` was one. */
  dropHidden (path: string): boolean {
    const slash = path.lastIndexOf('/')
    if (!isHiddenName(path.slice(slash + 1))) return false
    const { parent, name } = this.parent(path)
    return this.hidden.delete(`${parent}/${name}`)
  }

  private step (dir: number, name: string): number {
    if (isHiddenName(name)) {
      const alias = this.hidden.get(`${dir}/${name}`)
      if (alias !== undefined) return alias
    }
    return this.volume.lookup(dir, name).ino
  }
}
