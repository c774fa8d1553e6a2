/**
 * `snapctl restore` on real mounts: a deleted tree (a 64 MiB file of random data, nested
 * directories, three names of one inode, symlinks, a fifo, xattrs, owners, setuid, hand-set times)
 * comes back from a snapshot with every byte, attribute and hard link the snapshot shows, sharing
 * the snapshot's blocks: the store file grows by less than 4 MiB and the snapshot's USED falls back
 * to about 0. Writing to a restored file leaves the snapshot as it was (copy-on-write), and
 * restoring that one file again replaces it. Single files, symlinks and fifos come back over what
 * is in their place or where they are missing; a path relative to the working directory, --to DEST
 * and the package API work; an existing directory, a path missing from the snapshot and an unknown
 * snapshot are refused with one line and change nothing; `snapfs check` passes afterwards.
 */
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import {
  chmod, chown, lchown, link, lstat, lutimes, mkdir, open, readFile, rm, stat, symlink, unlink, writeFile
} from 'node:fs/promises'
import { join } from 'node:path'
import { restoreFromSnapshot } from '../dist/src/index.js'
import { ctl, ctlJson, ctlOk, failsWithOneLine, listSnapshots, umountAndCheck } from './helpers/ctl.js'
import { mountFresh, run, sha, snapctl, type Mounted } from './helpers/mount.js'
import { capture, mkfifo, removeXattr, setTimes, settledCapture, setXattr, type Tree } from './helpers/tree.js'

t.setTimeout(3 * 60_000)

const KiB = 1024
const MiB = 1024 * KiB
/** One data block of the store. */
const BLOCK = 64 * KiB
/** What the store file may grow by while a 64 MiB tree is restored: the records, not the data. */
const RECORD_SLACK = 4 * MiB

interface RestoreJson { inodes: number, links: number, bytes: number, path: string }

const snapshotOf = (m: Mounted, name: string, ...path: string[]): string => join(m.mnt, '.snapshots', name, ...path)

/** The store file's size once everything the system holds for it is written. */
async function storeSize (m: Mounted): Promise<number> {
  await run('sync', [])
  return (await stat(join(m.store, 'data.mdb'))).size
}

async function usedBy (t: Test, m: Mounted, name: string): Promise<number> {
  const info = (await listSnapshots(t, m)).find(s => s.name === name)
  if (info === undefined) throw new Error(`snapshot ${name} is not listed`)
  return info.used
}

/** The inodes and the extra names of a captured tree: what a restore of it creates. */
function inodesAndLinks (tree: Tree): { inodes: number, links: number } {
  const inodes = new Set(Object.values(tree).map(node => node.inode)).size
  return { inodes, links: Object.keys(tree).length - inodes }
}

/**
 * The tree restored in the first test, at `root` (created here): a 64 MiB file of random data,
 * three names of one inode in three directories, a pair of hard links, symlinks (relative,
 * absolute, dangling) with their own owner, a fifo, xattrs on a file and on directories, owners,
 * a setuid file, an empty file and an empty directory, every time set by hand. Returns the big
 * file's bytes.
 */
async function populateProject (t: Test, root: string): Promise<Buffer> {
  await mkdir(join(root, 'src', 'deep', 'er', 'est'), { recursive: true })
  await mkdir(join(root, 'lib'))
  await mkdir(join(root, 'emptydir'))
  const big = randomBytes(64 * MiB)
  await writeFile(join(root, 'big'), big)
  const readme = join(root, 'README')
  await writeFile(readme, 'read me\n')
  await chown(readme, 1234, 5678)
  await chmod(readme, 0o640)
  await setXattr(t, readme, 'user.color', 'blue')
  await setXattr(t, readme, 'user.bin', '0x00ff0000fe')
  await setXattr(t, readme, 'user.empty')
  await writeFile(join(root, 'setuid'), '#!/bin/sh\n')
  await chmod(join(root, 'setuid'), 0o4755)
  await writeFile(join(root, 'empty'), '')
  await writeFile(join(root, 'src', 'a.txt'), 'one inode, three names\n')
  await link(join(root, 'src', 'a.txt'), join(root, 'lib', 'a-link'))
  await link(join(root, 'src', 'a.txt'), join(root, 'src', 'deep', 'er', 'a3'))
  await writeFile(join(root, 'pair1'), randomBytes(100 * KiB))
  await link(join(root, 'pair1'), join(root, 'pair2'))
  await setXattr(t, join(root, 'pair1'), 'user.pair', 'both names')
  await writeFile(join(root, 'src', 'deep', 'er', 'est', 'leaf.txt'), 'leaf\n')
  await chown(join(root, 'src', 'deep', 'er', 'est', 'leaf.txt'), 7, 8)
  await symlink('../src/a.txt', join(root, 'lib', 'rel'))
  await symlink('/etc/hostname', join(root, 'lib', 'abs'))
  await symlink('no/such/target', join(root, 'lib', 'dangling'))
  await lchown(join(root, 'lib', 'rel'), 7, 8)
  await mkfifo(t, join(root, 'pipe'), 0o620)
  await chown(join(root, 'pipe'), 99, 98)
  await chmod(root, 0o750)
  await chown(root, 42, 43)
  await chown(join(root, 'src', 'deep'), 1000, 1000)
  await setXattr(t, root, 'user.on-dir', 'proj')
  await setXattr(t, join(root, 'src', 'deep', 'er'), 'user.on-dir', 'er')

  const files = ['big', 'README', 'setuid', 'empty', 'src/a.txt', 'pair1', 'src/deep/er/est/leaf.txt', 'pipe']
  for (const [i, file] of files.entries()) await setTimes(join(root, file), 1_600_000_000_250 + i * 86_400_500)
  for (const [i, symbolic] of ['lib/rel', 'lib/abs', 'lib/dangling'].entries()) {
    await lutimes(join(root, symbolic), new Date(1_550_000_000_125 + i * 1000), new Date(1_550_000_000_125 + i * 1000))
  }
  const dirs = ['src/deep/er/est', 'src/deep/er', 'src/deep', 'src', 'lib', 'emptydir', '.']
  for (const [i, dir] of dirs.entries()) await setTimes(join(root, dir), 1_500_000_000_750 + i * 3_600_000)
  return big
}

t.test('a deleted tree comes back whole from a snapshot, sharing its blocks; writes to it stay out of the snapshot', { timeout: 150_000 }, async t => {
  const m = await mountFresh(t)
  const proj = join(m.mnt, 'proj')
  await mkdir(proj)
  const big = await populateProject(t, proj)
  await writeFile(join(m.mnt, 'outside.txt'), 'not in the tree\n')
  const live = await settledCapture(proj)
  t.equal(live.big.sha, sha(big), 'the 64 MiB file was written whole')
  t.same([live['src/a.txt'].nlink, live['lib/a-link'].inode, live['src/deep/er/a3'].inode], [3, 'lib/a-link', 'lib/a-link'],
    'three names of one inode in three directories')
  t.equal(live.pipe.mode & 0o170000, 0o010000, 'the fifo is a fifo')

  await ctlOk(t, m, ['create', 'snap'])
  const snapTree = await capture(snapshotOf(m, 'snap', 'proj'))
  t.same(snapTree, live, 'the snapshot shows the tree as it was')

  await rm(proj, { recursive: true })
  const sizeBefore = await storeSize(m)
  const usedAlone = await usedBy(t, m, 'snap')
  t.ok(usedAlone >= 64 * MiB, `with the tree deleted, the snapshot alone holds its 64 MiB (USED ${usedAlone})`)

  const result = await ctlJson<RestoreJson>(t, m, ['restore', 'snap', proj])
  t.hasStrict(result, { ...inodesAndLinks(snapTree), path: '/proj' }, 'restore --json counts the inodes and the extra names')
  t.ok(result.bytes >= 64 * MiB && result.bytes <= 64 * MiB + MiB, `and the bytes shared: the tree's data (${result.bytes})`)
  const restored = await capture(proj)
  t.same(restored, snapTree, 'every byte, mode, owner, time, xattr, symlink, the fifo and the hard links are back')

  const growth = await storeSize(m) - sizeBefore
  t.ok(growth < RECORD_SLACK, `the store file grew by ${(growth / MiB).toFixed(2)} MiB: no data was copied`)
  const usedShared = await usedBy(t, m, 'snap')
  t.ok(usedShared < 4 * BLOCK, `the snapshot's USED falls back to about 0 once live shares its blocks (${usedShared})`)
  t.equal(await readFile(join(m.mnt, 'outside.txt'), 'utf8'), 'not in the tree\n', 'what is outside the tree is untouched')

  const changed = Buffer.from(big)
  changed.fill(0x5a, 10 * MiB, 11 * MiB)
  const fh = await open(join(proj, 'big'), 'r+')
  await fh.write(changed, 10 * MiB, MiB, 10 * MiB)
  await fh.close()
  t.equal(sha(await readFile(join(proj, 'big'))), sha(changed), 'the restored file takes a write')
  t.equal(sha(await readFile(snapshotOf(m, 'snap', 'proj', 'big'))), sha(big), 'the snapshot keeps its bytes (copy-on-write)')
  t.same(await capture(snapshotOf(m, 'snap', 'proj')), snapTree, 'the whole snapshot tree is unchanged')
  const usedAfterWrite = await usedBy(t, m, 'snap')
  t.ok(usedAfterWrite >= MiB && usedAfterWrite <= MiB + 2 * BLOCK,
    `the 1 MiB overwritten live is now the snapshot's alone (USED ${usedAfterWrite})`)

  const again = await ctl(m, ['restore', 'snap', join(proj, 'big')])
  t.equal(again.code, 0, `restoring the one file over the changed one exits 0 ${again.stderr}`)
  t.match(again.stdout, /^restored \S+\/proj\/big from snap to \S+\/proj\/big \(1 inodes, 0 extra links, 64\.\d MiB shared, no data copied\)\n$/,
    'restore says what it did')
  const final = await capture(proj)
  t.same(final.big, snapTree.big, 'the file is the snapshot\'s again, attributes too')
  const { '.': _finalRoot, ...finalBelow } = final
  const { '.': _snapRoot, ...snapBelow } = snapTree
  t.same(finalBelow, snapBelow, 'everything under the tree\'s root is still the snapshot\'s (only the root took the new entry)')
  const finalGrowth = await storeSize(m) - sizeBefore
  t.ok(finalGrowth < RECORD_SLACK + MiB, `the store file grew by ${(finalGrowth / MiB).toFixed(2)} MiB in all (the 1 MiB write, records)`)
  const usedFinal = await usedBy(t, m, 'snap')
  t.ok(usedFinal < 4 * BLOCK, `the snapshot shares everything with live again (USED ${usedFinal})`)

  await umountAndCheck(t, m)
  const remounted = await m.remount()
  t.same(await capture(join(remounted.mnt, 'proj')), final, 'the restored tree is the same after a remount')
})

t.test('single files come back over what is in their place; --to, relative paths and the API; refusals change nothing', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  const docs = join(m.mnt, 'docs')
  await mkdir(join(docs, 'sub'), { recursive: true })
  const report = join(docs, 'report.txt')
  await writeFile(report, 'the original report\n')
  await chown(report, 1234, 5678)
  await chmod(report, 0o640)
  await setXattr(t, report, 'user.state', 'original')
  await setXattr(t, report, 'user.gone-later', 'x')
  await symlink('report.txt', join(docs, 'link'))
  await mkfifo(t, join(docs, 'pipe'), 0o640)
  await writeFile(join(docs, 'hard1'), 'two names\n')
  await link(join(docs, 'hard1'), join(docs, 'hard2'))
  await writeFile(join(docs, 'sub', 'inner.txt'), 'inner\n')
  for (const [i, path] of ['report.txt', 'pipe', 'hard1', 'sub/inner.txt', 'sub', '.'].entries()) {
    await setTimes(join(docs, path), 1_600_000_000_500 + i * 60_000)
  }
  await lutimes(join(docs, 'link'), new Date(1_400_000_000_000), new Date(1_400_000_000_000))
  const live = await settledCapture(docs)
  await ctlOk(t, m, ['create', 'v1'])
  const snapDocs = await capture(snapshotOf(m, 'v1', 'docs'))
  t.same(snapDocs, live, 'the snapshot shows docs as it was')

  await writeFile(report, 'rewritten\n')
  await chmod(report, 0o600)
  await chown(report, 1, 2)
  await setXattr(t, report, 'user.state', 'changed')
  await removeXattr(t, report, 'user.gone-later')
  await unlink(join(docs, 'link'))
  await symlink('elsewhere', join(docs, 'link'))
  await unlink(join(docs, 'pipe'))
  await writeFile(join(docs, 'hard1'), 'changed through one name\n')
  await writeFile(join(m.mnt, 'after.txt'), 'made after v1\n')

  const relative = await snapctl(['restore', 'v1', 'report.txt'], { cwd: docs })
  t.equal(relative.code, 0, `restore with a path relative to the working directory, no -C ${relative.stderr}`)
  t.match(relative.stdout, /^restored \S+\/docs\/report\.txt from v1 to \S+\/docs\/report\.txt \(1 inodes, 0 extra links, \d+(\.\d)? [KMG]?i?B shared, no data copied\)\n$/,
    'it says what it restored')
  await ctlOk(t, m, ['restore', 'v1', join(docs, 'link')])
  await ctlOk(t, m, ['restore', 'v1', join(docs, 'pipe')])
  const back = await capture(docs)
  t.same(back['report.txt'], snapDocs['report.txt'], 'the rewritten file is replaced: bytes, mode, owner, times, xattrs')
  t.same(back.link, snapDocs.link, 'the retargeted symlink is replaced, with its times')
  t.same(back.pipe, snapDocs.pipe, 'the removed fifo is back')

  const pair = await ctlJson<RestoreJson>(t, m, ['restore', 'v1', join(docs, 'hard1')])
  t.hasStrict(pair, { inodes: 1, links: 0, path: '/docs/hard1' }, 'restoring one name of two restores one inode')
  const [hard1, hard2] = await Promise.all([lstat(join(docs, 'hard1')), lstat(join(docs, 'hard2'))])
  t.equal(await readFile(join(docs, 'hard1'), 'utf8'), 'two names\n', 'that name has the old bytes')
  t.equal(await readFile(join(docs, 'hard2'), 'utf8'), 'changed through one name\n', 'the other name keeps the live inode')
  t.not(hard1.ino, hard2.ino, 'they are two inodes now')
  t.same([hard1.nlink, hard2.nlink], [1, 1], 'with one name each')

  const copied = await ctlJson<RestoreJson>(t, m, ['restore', 'v1', docs, '--to', join(m.mnt, 'docs-copy')])
  t.hasStrict(copied, { ...inodesAndLinks(snapDocs), path: '/docs-copy' }, 'restore --to counts what it made')
  t.same(await capture(join(m.mnt, 'docs-copy')), snapDocs, '--to DEST: the tree as the snapshot shows it, hard links shared')

  const apiResult = await restoreFromSnapshot(m.mnt, 'v1', '/docs/sub', { to: '/api-sub' })
  t.hasStrict(apiResult, { inodes: 2, links: 0, path: '/api-sub' }, 'restoreFromSnapshot restores a directory elsewhere')
  t.same(await capture(join(m.mnt, 'api-sub')), await capture(snapshotOf(m, 'v1', 'docs', 'sub')), 'with what the snapshot shows')

  const before = await capture(m.mnt)
  failsWithOneLine(t, await ctl(m, ['restore', 'v1', docs]), /exists/i, 'restoring over an existing directory')
  failsWithOneLine(t, await ctl(m, ['restore', 'v1', join(docs, 'sub')]), /exists/i, 'restoring over an existing subdirectory')
  failsWithOneLine(t, await ctl(m, ['restore', 'v1', join(docs, 'sub'), '--to', join(m.mnt, 'docs-copy')]), /exists/i,
    '--to an existing directory')
  failsWithOneLine(t, await ctl(m, ['restore', 'v1', join(docs, 'nope')]), /no such file/i, 'a path missing from the snapshot')
  failsWithOneLine(t, await ctl(m, ['restore', 'v1', join(m.mnt, 'after.txt')]), /no such file/i, 'a path made after the snapshot')
  failsWithOneLine(t, await ctl(m, ['restore', 'nosuch', report]), /no snapshot/i, 'an unknown snapshot')
  t.same(await capture(m.mnt), before, 'the refused restores changed nothing')

  await umountAndCheck(t, m)
})
