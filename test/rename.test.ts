/**
 * rename(2) on a snapfs mount follows POSIX: files and directories move within and across
 * directories with their content and inode number intact, an existing file target is replaced
 * (its old content gone), a directory may replace an empty directory, and the refused cases fail
 * with the right errno (EINVAL, ENOTDIR, EISDIR, ENOTEMPTY) leaving both sides untouched.
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoOf, mountFresh, type Mounted, sha, scratchDir } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

let m: Mounted
t.before(async () => { m = await mountFresh(t) })

t.test('a renamed file keeps its content and inode; the old name is gone', async t => {
  const dir = await scratchDir(m, 'file')
  const data = randomBytes(300_000)
  await writeFile(join(dir, 'a'), data)
  const ino = (await stat(join(dir, 'a'))).ino
  await rename(join(dir, 'a'), join(dir, 'b'))
  t.equal(await errnoOf(() => stat(join(dir, 'a'))), 'ENOENT', 'old name gone')
  t.equal(sha(await readFile(join(dir, 'b'))), sha(data), 'content intact under the new name')
  t.equal((await stat(join(dir, 'b'))).ino, ino, 'same inode')
  t.same(await readdir(dir), ['b'], 'the directory lists only the new name')
})

t.test('a renamed directory keeps its whole tree', async t => {
  const dir = await scratchDir(m, 'dir')
  await mkdir(join(dir, 'src', 'deep', 'er'), { recursive: true })
  const data = randomBytes(70_000)
  await writeFile(join(dir, 'src', 'deep', 'er', 'leaf'), data)
  await writeFile(join(dir, 'src', 'top'), 'top')
  await rename(join(dir, 'src'), join(dir, 'dst'))
  t.equal(await errnoOf(() => stat(join(dir, 'src'))), 'ENOENT', 'old name gone')
  t.same((await readdir(join(dir, 'dst'))).sort(), ['deep', 'top'], 'top level listed')
  t.equal(sha(await readFile(join(dir, 'dst', 'deep', 'er', 'leaf'))), sha(data), 'a deep file is intact')
  t.equal(await readFile(join(dir, 'dst', 'top'), 'utf8'), 'top', 'a top file is intact')
})

t.test('rename over an existing file replaces it and its old content is gone', async t => {
  const dir = await scratchDir(m, 'over-file')
  const source = randomBytes(50_000)
  await writeFile(join(dir, 'src'), source)
  // The target is larger: none of its tail may survive under the new content.
  await writeFile(join(dir, 'dst'), randomBytes(500_000))
  const ino = (await stat(join(dir, 'src'))).ino
  await rename(join(dir, 'src'), join(dir, 'dst'))
  const st = await stat(join(dir, 'dst'))
  t.equal(st.size, source.length, 'the target has the source size')
  t.equal(st.ino, ino, 'the target is the source inode')
  t.equal(sha(await readFile(join(dir, 'dst'))), sha(source), 'the target has the source content')
  t.same(await readdir(dir), ['dst'], 'only the target name is left')
})

t.test('a file moved across directories keeps its content', async t => {
  const dir = await scratchDir(m, 'across')
  await mkdir(join(dir, 'one'))
  await mkdir(join(dir, 'two', 'three'), { recursive: true })
  const data = randomBytes(200_000)
  await writeFile(join(dir, 'one', 'f'), data)
  await rename(join(dir, 'one', 'f'), join(dir, 'two', 'three', 'g'))
  t.same(await readdir(join(dir, 'one')), [], 'the source directory is empty')
  t.same(await readdir(join(dir, 'two', 'three')), ['g'], 'the target directory has the file')
  t.equal(sha(await readFile(join(dir, 'two', 'three', 'g'))), sha(data), 'content intact')
})

t.test('a directory moved across directories keeps its tree and fixes link counts', async t => {
  const dir = await scratchDir(m, 'across-dir')
  await mkdir(join(dir, 'from', 'moving', 'child'), { recursive: true })
  await mkdir(join(dir, 'to'))
  await writeFile(join(dir, 'from', 'moving', 'child', 'f'), 'deep')
  await rename(join(dir, 'from', 'moving'), join(dir, 'to', 'moved'))
  t.equal(await readFile(join(dir, 'to', 'moved', 'child', 'f'), 'utf8'), 'deep', 'content intact')
  t.equal((await stat(join(dir, 'from'))).nlink, 2, 'the old parent lost a link')
  t.equal((await stat(join(dir, 'to'))).nlink, 3, 'the new parent gained a link')
})

t.test('a directory replaces an empty directory', async t => {
  const dir = await scratchDir(m, 'over-empty')
  await mkdir(join(dir, 'src'))
  await writeFile(join(dir, 'src', 'f'), 'kept')
  await mkdir(join(dir, 'dst'))
  await rename(join(dir, 'src'), join(dir, 'dst'))
  t.same(await readdir(dir), ['dst'], 'only the target name is left')
  t.equal(await readFile(join(dir, 'dst', 'f'), 'utf8'), 'kept', 'the source content is under the target')
})

t.test('moving a directory into its own subdirectory fails with EINVAL', async t => {
  const dir = await scratchDir(m, 'into-self')
  await mkdir(join(dir, 'parent', 'child'), { recursive: true })
  t.equal(await errnoOf(() => rename(join(dir, 'parent'), join(dir, 'parent', 'child', 'x'))), 'EINVAL', 'into a descendant')
  t.ok((await stat(join(dir, 'parent', 'child'))).isDirectory(), 'the tree is unchanged')
})

t.test('a directory over a file fails with ENOTDIR', async t => {
  const dir = await scratchDir(m, 'dir-over-file')
  await mkdir(join(dir, 'd'))
  await writeFile(join(dir, 'f'), 'file')
  t.equal(await errnoOf(() => rename(join(dir, 'd'), join(dir, 'f'))), 'ENOTDIR', 'dir over file')
  t.equal(await readFile(join(dir, 'f'), 'utf8'), 'file', 'the file is untouched')
  t.ok((await stat(join(dir, 'd'))).isDirectory(), 'the directory is untouched')
})

t.test('a file over a directory fails with EISDIR', async t => {
  const dir = await scratchDir(m, 'file-over-dir')
  await mkdir(join(dir, 'd'))
  await writeFile(join(dir, 'f'), 'file')
  t.equal(await errnoOf(() => rename(join(dir, 'f'), join(dir, 'd'))), 'EISDIR', 'file over dir')
  t.equal(await readFile(join(dir, 'f'), 'utf8'), 'file', 'the file is untouched')
  t.ok((await stat(join(dir, 'd'))).isDirectory(), 'the directory is untouched')
})

t.test('a directory over a non-empty directory fails with ENOTEMPTY', async t => {
  const dir = await scratchDir(m, 'over-full')
  await mkdir(join(dir, 'src'))
  await writeFile(join(dir, 'src', 'a'), 'a')
  await mkdir(join(dir, 'dst'))
  await writeFile(join(dir, 'dst', 'b'), 'b')
  t.equal(await errnoOf(() => rename(join(dir, 'src'), join(dir, 'dst'))), 'ENOTEMPTY', 'over a non-empty directory')
  t.equal(await readFile(join(dir, 'src', 'a'), 'utf8'), 'a', 'the source is untouched')
  t.equal(await readFile(join(dir, 'dst', 'b'), 'utf8'), 'b', 'the target is untouched')
})
