from hpo.service.cli import main

main()
