"""What tests share besides fixtures: polling, starting the suite, fakes of the services' ports.

conftest.py files hold fixtures only; anything a test imports comes from here.
"""
